"""The tiny backbone runs Wan2.1's I2V code path: codec, prompt encoder, 36-channel-style input."""

from __future__ import annotations

import pytest
import torch

from anisora.backbones import build_backbone
from anisora.backbones.base import check_clip_shape
from anisora.backbones.tiny import SpaceToDepthCodec, TinyBackboneSpec, build_tiny_backbone
from anisora.config.errors import ConfigError

SMALL = TinyBackboneSpec(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=32, text_dim=16,
                         text_layers=1, text_heads=2, spatial_factor=1)


@pytest.mark.parametrize("spatial", [1, 2])
def test_codec_is_lossless_and_groups_frames_like_wan(spatial):
    codec = SpaceToDepthCodec(spatial_factor=spatial, scale=2.0)
    video = torch.rand(2, 3, 9, 8, 8) * 2 - 1
    latent = codec.encode(video)
    assert latent.shape == (2, 12 * spatial**2, 3, 8 // spatial, 8 // spatial)
    assert torch.allclose(codec.decode(latent), video, atol=1e-6)
    # latent slot 1 holds pixel frames 1..4 only
    changed = video.clone()
    changed[:, :, 5] += 1
    diff = (codec.encode(changed) - latent).abs().sum(dim=(0, 1, 3, 4))
    assert diff[0] == 0 and diff[1] == 0 and diff[2] > 0


@pytest.mark.parametrize("spatial", [1, 2])
def test_residual_codec_is_lossless_and_zero_for_a_still_clip(spatial):
    codec = SpaceToDepthCodec(spatial_factor=spatial, scale=2.0, residual=True)
    video = torch.rand(2, 3, 9, 8, 8) * 2 - 1
    assert torch.allclose(codec.decode(codec.encode(video)), video, atol=1e-6)
    still = video[:, :, :1].expand(-1, -1, 9, -1, -1)
    latent = codec.encode(still)
    assert latent[:, :, 1:].abs().max() < 1e-6  # nothing moves: later latent frames are empty
    assert torch.allclose(latent[:, :, 0], SpaceToDepthCodec(spatial, scale=2.0).encode(still)[:, :, 0])


def test_backbone_wires_wan_i2v_channels_and_denoises():
    bb = build_tiny_backbone(SMALL)
    assert bb.denoiser.config.in_channels == 2 * bb.latent_channels + 4
    video = torch.rand(2, 3, 9, 8, 8) * 2 - 1
    mask = torch.zeros(2, 9, 8, 8)
    mask[:, 0] = 1
    cond = bb.conditioning(["a red slime moves left across the meadow.", ""], video * mask[:, None], mask)
    assert cond.guide.shape == (2, 4 + bb.latent_channels, 3, 8, 8)
    assert cond.guide[:, :4, 0].eq(1).all() and cond.guide[:, :4, 1:].eq(0).all()
    out = bb.denoise(torch.randn(2, bb.latent_channels, 3, 8, 8), torch.tensor([500.0, 10.0]), cond)
    assert out.shape == (2, bb.latent_channels, 3, 8, 8) and torch.isfinite(out).all()
    assert out.std() > 1e-3 and not torch.allclose(out[0], out[1])  # a prediction, not a constant


def test_prompt_embeddings_are_zero_past_each_prompt():
    bb = build_tiny_backbone(SMALL)
    emb = bb.encode_prompt(["a blue block moves up", ""])
    assert emb.shape == (2, SMALL.max_sequence_length, SMALL.text_dim)
    assert emb[0, :6].abs().sum(-1).gt(0).all() and emb[0, 6:].eq(0).all()  # 5 words + </s>
    assert emb[1, :1].abs().sum() > 0 and emb[1, 1:].eq(0).all()


def test_same_spec_gives_same_weights():
    a, b = build_tiny_backbone(SMALL), build_tiny_backbone(SMALL)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_build_from_model_config_dict():
    cfg = {"_target_": "anisora.backbones.tiny.build", "kind": "tiny", "objective": {"shift": 1.0},
           "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "ffn_dim": 16, "text_dim": 16,
           "text_layers": 1, "text_heads": 2}
    bb = build_backbone(cfg)
    assert bb.denoiser.config.num_layers == 1


@pytest.mark.parametrize(("frames", "h", "w", "key"), [(8, 16, 16, "data.num_frames"), (9, 18, 16, "data.height"),
                                                        (9, 16, 6, "data.width")])
def test_clip_shape_errors_name_the_key(frames, h, w, key):
    with pytest.raises(ConfigError, match=rf"^{key}: must be"):
        check_clip_shape(frames, h, w, 4, 2, 2)
