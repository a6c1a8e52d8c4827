"""The tiny CogVideoX runs CogVideoX-5B I2V's code path at CPU size: lossless codec, guide slots, v-prediction."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from anisora.backbones import build_backbone, latent_grid
from anisora.backbones.cogvideox import CogVideoXI2VBackbone
from anisora.backbones.tiny_cogvideox import CogVideoXPixelCodec, TinyCogVideoXSpec, build_tiny_cogvideox
from anisora.config.errors import ConfigError
from anisora.config.validate import check_node
from anisora.diffusion.objectives import VPrediction
from anisora.diffusion.sampling import SamplerSpec
from anisora.inference.pipeline import generate

SMALL = TinyCogVideoXSpec(num_layers=1, num_attention_heads=2, attention_head_dim=16, time_embed_dim=16,
                          text_dim=16, text_layers=1, text_heads=2, text_ff=32, max_sequence_length=8)
FRAMES, SIZE = 9, 8


@pytest.fixture(scope="module")
def backbone() -> CogVideoXI2VBackbone:
    return build_tiny_cogvideox(SMALL)


def clip(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("spatial", [1, 2])
def test_codec_round_trips_pixels_exactly(spatial):
    codec = CogVideoXPixelCodec(spatial_factor=spatial, scale=2.0)
    video = clip()
    latent = codec.encode(video, torch.Generator())
    assert latent.shape == (2, 12 * spatial**2, 3, SIZE // spatial, SIZE // spatial)
    assert torch.allclose(codec.decode(latent), video, atol=1e-6)
    guide = codec.encode_guide_frame(video[:1, :, :1])
    assert torch.equal(guide, latent[:1, :, :1])  # frame 0 alone encodes as the video's first slot


def test_backbone_is_the_cogvideox_adapter_with_v_prediction(backbone):
    cfg = backbone.denoiser.config
    assert isinstance(backbone, CogVideoXI2VBackbone) and isinstance(backbone.objective, VPrediction)
    assert cfg.in_channels == 2 * backbone.latent_channels and cfg.out_channels == backbone.latent_channels
    assert cfg.use_rotary_positional_embeddings and not cfg.use_learned_positional_embeddings


@pytest.mark.parametrize("given", [[0], [0, 8], [0, 3, 5]])
def test_condition_puts_each_guide_frame_at_its_slot(backbone, given):
    video = clip()
    mask = torch.zeros(2, FRAMES, SIZE, SIZE)
    mask[:, given] = 1
    guide = backbone.condition(video * mask[:, None], mask)
    assert guide.shape == (2, backbone.latent_channels, 3, SIZE, SIZE)
    slots = {0 if k == 0 else (k - 1) // 4 + 1: k for k in given}  # a later frame wins a shared slot
    for slot in range(3):
        if slot in slots:
            k = slots[slot]
            assert torch.equal(guide[:, :, slot : slot + 1], backbone.codec.encode(video[:, :, k : k + 1]))
        else:
            assert guide[:, :, slot].eq(0).all()


def test_denoise_returns_the_latent_shape(backbone):
    video = clip()
    mask = torch.zeros(2, FRAMES, SIZE, SIZE)
    mask[:, 0] = 1
    cond = backbone.conditioning(["a red slime moves left across the meadow.", ""], video * mask[:, None], mask)
    shape = (2, *backbone.latent_shape(FRAMES, SIZE, SIZE))
    out = backbone.denoise(torch.randn(shape), torch.tensor([999, 10]), cond)
    assert out.shape == shape and torch.isfinite(out).all()


def test_generate_returns_uint8_frames_of_the_clip_shape(backbone):
    video = clip(1)
    mask = torch.zeros(1, FRAMES, SIZE, SIZE)
    mask[:, 0] = 1
    spec = SamplerSpec(name="cogvideox_dpm", num_steps=2, guidance_scale=2.0)
    frames = generate(backbone, ["a blue block moves up"], video * mask[:, None], mask, [0], spec)
    assert frames.dtype.name == "uint8" and frames.shape == (1, FRAMES, SIZE, SIZE, 3)


def test_same_spec_gives_same_weights():
    a, b = build_tiny_cogvideox(SMALL), build_tiny_cogvideox(SMALL)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("task", ["train", "infer", "evaluate"])
def test_model_config_composes_with_its_sampler(task):
    cfg = compose(task, ["model=tiny_cogvideox"])
    check_node(cfg, "")
    assert cfg.model.kind == "tiny_cogvideox" and cfg.sampler.name == "cogvideox_dpm"
    assert latent_grid(cfg.model) == (4, 1, 2)


def test_head_dim_the_rotary_embedding_cannot_split_is_refused():
    with pytest.raises(ConfigError, match=r"^model.attention_head_dim: must be a multiple of 16"):
        build_tiny_cogvideox(TinyCogVideoXSpec(attention_head_dim=24))


def test_build_from_model_config_dict():
    cfg = {"_target_": "anisora.backbones.tiny_cogvideox.build", "kind": "tiny_cogvideox",
           "objective": {"name": "v_pred"}, "lora": {"rank": 2, "alpha": 2.0, "dropout": 0.0,
                                                     "targets": ["to_q", "to_v"]},
           **{k: getattr(SMALL, k) for k in ("num_layers", "num_attention_heads", "attention_head_dim",
                                             "time_embed_dim", "text_dim", "text_layers", "text_heads")}}
    bb = build_backbone(cfg)
    assert isinstance(bb.objective, VPrediction)
    assert any("lora" in name for name, _ in bb.denoiser.named_parameters())
