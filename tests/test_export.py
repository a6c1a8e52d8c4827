"""Exports load unchanged in stock diffusers pipelines: save_pretrained folders and LoRA safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from peft import LoraConfig
from PIL import Image
from test_wan_parity import FRAMES, PROMPT, SIZE, TEXT_LEN, ours, random_image, tiny_parts

from anisora.backbones.export import export_lora, export_pipeline, stock_pipeline
from anisora.backbones.tiny import TinyBackboneSpec, build_tiny_backbone
from anisora.config.errors import ConfigError

CALL = {"prompt": PROMPT, "height": SIZE, "width": SIZE, "num_frames": FRAMES, "num_inference_steps": 2,
        "guidance_scale": 4.0, "max_sequence_length": TEXT_LEN, "output_type": "np"}


def frames(pipe, **kwargs) -> np.ndarray:
    return pipe(generator=torch.Generator().manual_seed(5), **CALL, **kwargs).frames[0]


@pytest.mark.parametrize("variant", ["i2v", "t2v"])
def test_exported_folder_loads_in_the_stock_pipeline_and_samples_the_same(tmp_path, variant):
    backbone = ours(tiny_parts(variant), variant)
    dst = export_pipeline(backbone, tmp_path / "export")
    cls = WanImageToVideoPipeline if variant == "i2v" else WanPipeline
    loaded = cls.from_pretrained(dst, local_files_only=True)
    kwargs = {"image": Image.fromarray(random_image(1))} if variant == "i2v" else {}
    np.testing.assert_allclose(frames(loaded, **kwargs), frames(stock_pipeline(backbone), **kwargs), atol=1e-5)
    with pytest.raises(ConfigError, match="not empty"):
        export_pipeline(backbone, dst)


def test_lora_export_loads_with_load_lora_weights(tmp_path):
    backbone = ours(tiny_parts("i2v"), "i2v")
    backbone.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                             init_lora_weights=False))
    x = torch.randn(1, 36, 3, 4, 4)
    text = torch.randn(1, TEXT_LEN, 32)
    image = torch.randn(1, 5, 8)
    with torch.no_grad():
        tuned = backbone.denoiser(x, torch.tensor([500.0]), text, image, return_dict=False)[0]
    dst = export_lora(backbone, tmp_path / "lora")
    assert (dst / "pytorch_lora_weights.safetensors").is_file()

    fresh = tiny_parts("i2v")  # same seed: the base weights equal the tuned model's base
    stock = WanImageToVideoPipeline(scheduler=None, **fresh)
    with torch.no_grad():
        before = stock.transformer(x, torch.tensor([500.0]), text, image, return_dict=False)[0]
        stock.load_lora_weights(dst)
        after = stock.transformer(x, torch.tensor([500.0]), text, image, return_dict=False)[0]
    assert not torch.allclose(before, tuned, atol=1e-4)
    assert torch.allclose(after, tuned, atol=1e-5)


def test_tiny_model_has_no_pipeline_export(tmp_path):
    tiny = build_tiny_backbone(TinyBackboneSpec(num_layers=1, num_attention_heads=2, attention_head_dim=8,
                                                ffn_dim=16, text_dim=16, text_layers=1, text_heads=2))
    with pytest.raises(ConfigError, match="space-to-depth"):
        export_pipeline(tiny, tmp_path / "x")
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        export_lora(ours(tiny_parts("t2v"), "t2v"), tmp_path / "y")


def test_cogvideox_export_loads_in_the_stock_pipeline_and_samples_the_same(tmp_path):
    from diffusers import CogVideoXImageToVideoPipeline
    from test_cogvideox import TINY

    from anisora.backbones.cogvideox import CogVideoXSpec, build_random_cogvideox

    backbone = build_random_cogvideox(CogVideoXSpec(**TINY))
    dst = export_pipeline(backbone, tmp_path / "cogvideox")
    loaded = CogVideoXImageToVideoPipeline.from_pretrained(dst, local_files_only=True)
    call = {"image": Image.fromarray(random_image(2)), "prompt": PROMPT, "height": 32, "width": 32,
            "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 6.0, "use_dynamic_cfg": True,
            "max_sequence_length": TINY["max_sequence_length"], "output_type": "np"}
    stock = stock_pipeline(backbone)
    for pipe in (loaded, stock):
        pipe.set_progress_bar_config(disable=True)
    expected = stock(generator=torch.Generator().manual_seed(3), **call).frames[0]
    np.testing.assert_allclose(loaded(generator=torch.Generator().manual_seed(3), **call).frames[0], expected,
                               atol=1e-5)
    assert type(loaded.scheduler).__name__ == "CogVideoXDPMScheduler"
