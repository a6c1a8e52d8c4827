"""Objectives as objects: each one's noising, target and conversions against its formula; the backbone holds the
objective its config names; SFT trains with it (v-prediction for CogVideoX, checked against the formula)."""

from __future__ import annotations

import pytest
import torch

from anisora.config.errors import ConfigError
from anisora.diffusion.objectives import FlowMatching, VPrediction, build_objective
from anisora.diffusion.v_prediction import alphas_cumprod

X0 = torch.randn(3, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
NOISE = torch.randn(3, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))


def test_flow_matching_formula_and_conversions():
    fm = FlowMatching(shift=3.0)
    s = torch.tensor([0.1, 0.5, 0.9])
    x_t = fm.add_noise(X0, NOISE, s)
    view = s.view(-1, 1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - view) * X0 + view * NOISE)
    v = fm.target(X0, NOISE, s)
    assert torch.allclose(v, NOISE - X0)
    assert torch.allclose(fm.x0_from_output(x_t, v, s), X0, atol=1e-5)
    assert torch.allclose(fm.noise_from_output(x_t, v, s), NOISE, atol=1e-5)
    assert torch.allclose(fm.output_from_x0(x_t, X0, s), v, atol=1e-5)
    assert torch.allclose(fm.model_timestep(s), s * 1000)
    assert torch.equal(fm.noise_std(s), s)


def test_v_prediction_formula_and_conversions():
    vp = VPrediction()
    t = torch.tensor([10, 500, 990])
    abar = alphas_cumprod()[t].view(-1, 1, 1, 1, 1).float()
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = vp.add_noise(X0, NOISE, t)
    assert torch.allclose(x_t, a * X0 + s * NOISE, atol=1e-6)
    v = vp.target(X0, NOISE, t)
    assert torch.allclose(v, a * NOISE - s * X0, atol=1e-6)
    assert torch.allclose(vp.x0_from_output(x_t, v, t), X0, atol=1e-5)
    assert torch.allclose(vp.output_from_x0(x_t, X0, t), v, atol=1e-4)
    assert torch.allclose(vp.noise_std(t), s.flatten())
    assert torch.equal(vp.model_timestep(t), t)
    assert int(vp.level_of_std(float(s[1]))) == 500


def test_build_objective_names_and_refusals():
    assert isinstance(build_objective({"name": "flow_match", "shift": 5.0, "motion_weight": 2.0}), FlowMatching)
    assert isinstance(build_objective({"name": "v_pred", "timestep_sampling": "uniform"}), VPrediction)
    with pytest.raises(ConfigError, match=r"model\.objective\.name"):
        build_objective({"name": "eps"})


def training_batch(cfg, count: int) -> dict:
    """`count` synthetic training clips as the datamodule collates them."""
    from anisora.data.datamodule import clip_to_item, collate
    from anisora.data.synthetic import make_clip
    from anisora.tasks.train import world_of

    world = world_of(cfg.data)
    return collate([clip_to_item(make_clip(world, 0, "train", i), i, 0) for i in range(count)])


def test_cogvideox_backbone_holds_v_prediction_and_sft_trains_on_the_v_target():
    """The tiny CogVideoX trains with the v target: one SFT step's target is a x noise - s x0 for its drawn step."""
    from conftest import compose
    from omegaconf import OmegaConf

    from anisora.methods.sft import SFTMethod

    cfg = compose("train", ["model=tiny_cogvideox", "accelerator=cpu", "data.batch_size=2"])
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "guide", "optimizer", "sampler",
                                                                      "data")}
    method = SFTMethod(**parts, max_steps=2)
    assert isinstance(method.backbone.objective, VPrediction)
    batch = training_batch(cfg, 2)
    inputs = method.prepare_batch(batch)
    gens = [torch.Generator().set_state(g.get_state()) for g in inputs.generators]
    terms = method.denoising_inputs(inputs)
    t = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in gens])
    noise = torch.stack([torch.randn(inputs.x0.shape[1:], generator=g) for g in gens])
    abar = alphas_cumprod(method.backbone.noise_schedule)[t].view(-1, 1, 1, 1, 1).float()
    assert torch.equal(terms["timestep"], t)
    torch.testing.assert_close(terms["target"], abar.sqrt() * noise - (1 - abar).sqrt() * inputs.x0)
    torch.testing.assert_close(terms["noisy"], abar.sqrt() * inputs.x0 + (1 - abar).sqrt() * noise)
