"""The sampling loop: seeded, batch-independent, CFG options, both schedulers."""

from __future__ import annotations

import pytest
import torch

from anisora.backbones.tiny import TinyBackboneSpec, build_tiny_backbone
from anisora.diffusion.flow_matching import sample_sigmas, shift_sigmas
from anisora.diffusion.loss_weights import motion_loss_weight, weighted_mse
from anisora.diffusion.objectives import FlowMatching
from anisora.diffusion.sampling import SamplerSpec, sample

SPEC = TinyBackboneSpec(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=32, text_dim=16,
                        text_layers=1, text_heads=2, spatial_factor=1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    bb = build_tiny_backbone(SPEC).eval()
    video = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    mask = torch.zeros(2, 5, 8, 8)
    mask[:, 0] = 1
    cond = bb.conditioning(["a red slime moves left", "a blue block moves up"], video * mask[:, None], mask)
    uncond = bb.conditioning(["", ""], video * mask[:, None], mask)
    return bb, cond, uncond, bb.latent_shape(5, 8, 8)


def run(setup, spec, seeds=(0, 1)):
    bb, cond, uncond, shape = setup
    return sample(bb, cond, uncond, shape, list(seeds), spec)


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_sampling_is_seeded_and_finite(setup, name):
    spec = SamplerSpec(name=name, num_steps=3)
    a, b = run(setup, spec), run(setup, spec)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.equal(a, run(setup, spec, seeds=(5, 6)))


def test_a_clip_depends_on_its_own_seed_not_on_the_batch(setup):
    bb, cond, uncond, shape = setup
    spec = SamplerSpec(num_steps=3)
    both = sample(bb, cond, uncond, shape, [0, 1], spec)
    second = sample(bb, cond.__class__(cond.text[1:], cond.guide[1:]), uncond.__class__(uncond.text[1:],
                    uncond.guide[1:]), shape, [1], spec)
    assert torch.allclose(both[1:], second, atol=1e-5)


def test_guidance_interval_above_every_sigma_equals_no_guidance(setup):
    no_cfg = run(setup, SamplerSpec(num_steps=3, guidance_scale=1.0))
    never = run(setup, SamplerSpec(num_steps=3, guidance_scale=7.0, guidance_min_sigma=1.0 + 1e-6))
    always = run(setup, SamplerSpec(num_steps=3, guidance_scale=7.0))
    assert torch.allclose(no_cfg, never) and not torch.allclose(no_cfg, always)


def test_clamp_bounds_the_result(setup):
    out = run(setup, SamplerSpec(num_steps=4, guidance_scale=20.0, clamp_x0=0.5))
    assert out.abs().max() <= 0.5 + 1e-4


def test_flow_matching_targets_and_shift():
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    levels = torch.tensor([0.0, 0.5, 1.0])
    xt, target = FlowMatching().add_noise(x0, noise, levels), FlowMatching().target(x0, noise, levels)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[2], noise[2])
    assert torch.allclose(target, noise - x0)
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(shift_sigmas(u, 1.0), u)
    assert torch.allclose(shift_sigmas(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))
    sig = sample_sigmas(4096, 3.0, torch.Generator().manual_seed(0))
    assert 0 < sig.min() and sig.max() < 1 and sig.mean() > 0.6  # shift 3 favours high noise


def test_motion_weight_is_one_where_nothing_moves_and_peaks_where_most_changes():
    x0 = torch.zeros(2, 4, 3, 4, 4)
    x0[0, :, 1, 2, 3] = 1.0  # sample 0: one latent location changes after the first frame
    x0[0, :, 2, 2, 3] = 0.5
    w = motion_loss_weight(x0, 4.0)
    assert w.shape == (2, 1, 3, 4, 4)
    assert w[0, 0, 1, 2, 3] == pytest.approx(5.0) and w[0, 0, 2, 2, 3] == pytest.approx(3.0)
    assert (w[1] == 1.0).all() and w[0, 0, 0].eq(1.0).all()  # still sample and first frame: plain weight
    assert motion_loss_weight(x0, 0.0) is None
    residual = torch.cat([x0[:, :, :1] + 7.0, x0[:, :, 1:]], dim=2)  # same motion, stored as differences
    assert torch.allclose(motion_loss_weight(residual, 4.0, residual=True), w)


def test_weighted_mse_reduces_to_mse_and_follows_the_weight():
    pred, target = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    plain = (pred - target).square().mean()
    assert torch.allclose(weighted_mse(pred, target, None), plain)
    assert torch.allclose(weighted_mse(pred, target, torch.full((2, 1, 3, 4, 4), 3.0)), plain)
    only = torch.zeros(2, 1, 3, 4, 4)
    only[0, 0, 1, 2, 3] = 1.0
    assert torch.allclose(weighted_mse(pred, target, only), (pred - target)[0, :, 1, 2, 3].square().mean())
