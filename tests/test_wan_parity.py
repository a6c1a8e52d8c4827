"""Wan2.1 through anisora gives the same frames as stock diffusers pipelines for the same components.

Tiny random components, fp32 on the CPU; frames compared before quantisation (max abs diff <= 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from anisora.backbones.tiny import word_tokenizer, world_vocabulary
from anisora.backbones.wan_loading import WanSpec, assemble, build, parameter_counts
from anisora.backbones.wan_parts import CLIPImageEncoder
from anisora.config.errors import ConfigError
from anisora.diffusion.sampling import SamplerSpec
from anisora.guidance.pair import guide_pair
from anisora.inference.pipeline import from_uint8_frames, generate_pixels

FRAMES, SIZE, TEXT_LEN = 9, 32, 16
PROMPT = "a red slime moves left across the meadow. aesthetic score: 5.5. motion score: 2.0."
NEGATIVE = "a still blue block"


def tiny_parts(variant: str, flf2v: bool = False) -> dict:
    torch.manual_seed(0)
    tokenizer = word_tokenizer(world_vocabulary())
    parts = {
        "tokenizer": tokenizer,
        "text_encoder": UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64,
                                                    num_layers=2, num_heads=4, relative_attention_num_buckets=8)),
        "vae": AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True]),
    }
    image = variant == "i2v"
    clip_tokens = (32 // 8) ** 2 + 1
    parts["transformer"] = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36 if image else 16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=8 if image else None,
        pos_embed_seq_len=2 * clip_tokens if flf2v else None,
    )
    if image:
        parts["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=8))
        parts["image_processor"] = CLIPImageProcessorPil(crop_size={"height": 32, "width": 32},
                                                         size={"shortest_edge": 32})
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return parts


def ours(parts: dict, variant: str):
    image_encoder = None
    if "image_encoder" in parts:
        image_encoder = CLIPImageEncoder(parts["image_encoder"], parts["image_processor"])
    spec = WanSpec(variant=variant, max_sequence_length=TEXT_LEN)
    return assemble(spec, parts["transformer"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                    image_encoder)


def scheduler_for(spec: SamplerSpec):
    if spec.name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.shift)
    return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=spec.shift)


def random_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("sampler,last", [("unipc", False), ("euler", False), ("unipc", True)])
def test_wan_i2v_matches_wan_image_to_video_pipeline(sampler, last):
    parts = tiny_parts("i2v", flf2v=last)
    spec = SamplerSpec(name=sampler, num_steps=3, shift=3.0, guidance_scale=5.0)
    first, final = random_image(1), random_image(2)
    pipe = WanImageToVideoPipeline(scheduler=scheduler_for(spec), **parts)
    kwargs = {"last_image": Image.fromarray(final)} if last else {}
    theirs = pipe(image=Image.fromarray(first), prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE,
                  num_frames=FRAMES, num_inference_steps=3, guidance_scale=5.0, max_sequence_length=TEXT_LEN,
                  generator=torch.Generator().manual_seed(7), output_type="np", **kwargs).frames[0]

    frames = [(0, from_uint8_frames(first[None])[:, 0])]
    if last:
        frames.append((-1, from_uint8_frames(final[None])[:, 0]))
    g, m = guide_pair(frames, FRAMES, SIZE, SIZE)
    pixels = generate_pixels(ours(parts, "i2v"), [PROMPT], g[None], m[None], [7], spec, NEGATIVE)
    mine = ((pixels[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).numpy()
    assert mine.shape == theirs.shape
    assert np.abs(mine - theirs).max() <= 1e-4


def test_wan_t2v_matches_wan_pipeline():
    parts = tiny_parts("t2v")
    spec = SamplerSpec(name="unipc", num_steps=3, shift=3.0, guidance_scale=5.0)
    pipe = WanPipeline(scheduler=scheduler_for(spec), **parts)
    theirs = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_frames=FRAMES,
                  num_inference_steps=3, guidance_scale=5.0, max_sequence_length=TEXT_LEN,
                  generator=torch.Generator().manual_seed(3), output_type="np").frames[0]
    g, m = torch.zeros(1, 3, FRAMES, SIZE, SIZE), torch.zeros(1, FRAMES, SIZE, SIZE)
    pixels = generate_pixels(ours(parts, "t2v"), [PROMPT], g, m, [3], spec, NEGATIVE, offload_encoders=True)
    mine = ((pixels[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).numpy()
    assert np.abs(mine - theirs).max() <= 1e-4


def test_folder_round_trip_and_missing_part_is_named(tmp_path):
    parts = tiny_parts("i2v")
    WanImageToVideoPipeline(scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True),
                            **parts).save_pretrained(tmp_path / "wan")
    backbone = build(variant="i2v", ckpt=str(tmp_path / "wan"), max_sequence_length=TEXT_LEN)
    counts = parameter_counts(backbone)
    assert counts["dit"] == sum(p.numel() for p in parts["transformer"].parameters())
    for name, param in parts["transformer"].state_dict().items():
        assert torch.equal(backbone.denoiser.state_dict()[name], param)
    # AniSora V2/V3 ship the DiT in Wan's original layout: use it in place of the folder's transformer
    from safetensors.torch import save_file

    from anisora.backbones.wan_original import to_original_state_dict

    original = to_original_state_dict(parts["transformer"].state_dict(), prefix="model.diffusion_model.")
    names = sorted(original)
    (tmp_path / "anisora_v3").mkdir()
    for i, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        save_file({k: original[k].contiguous() for k in chunk},
                  tmp_path / "anisora_v3" / f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors")
    import shutil

    shutil.rmtree(tmp_path / "wan" / "transformer")
    swapped = build(variant="i2v", ckpt=str(tmp_path / "wan"), transformer=str(tmp_path / "anisora_v3"),
                    max_sequence_length=TEXT_LEN, attention_head_dim=16)
    for name, param in parts["transformer"].state_dict().items():
        assert torch.equal(swapped.denoiser.state_dict()[name], param)

    shutil.rmtree(tmp_path / "wan" / "vae")
    with pytest.raises(ConfigError, match=r"wan/vae is missing"):
        build(variant="i2v", ckpt=str(tmp_path / "wan"), transformer=str(tmp_path / "anisora_v3"))
    with pytest.raises(ConfigError, match=r"wan/transformer is missing"):
        build(variant="i2v", ckpt=str(tmp_path / "wan"))
    with pytest.raises(ConfigError, match=r"model.transformer: .*nowhere does not exist"):
        build(variant="i2v", ckpt=str(tmp_path / "wan"), transformer=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="not a directory"):
        build(variant="i2v", ckpt=str(tmp_path / "nowhere"))
