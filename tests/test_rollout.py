"""The sampler core: gradients through sampling steps with activation checkpointing, recorded trajectories,
per-step log-probabilities of the stochastic sampler, exact sigma lists, one CFG function."""

from __future__ import annotations

import torch

from anisora.backbones.checkpointing import apply_activation_checkpointing
from anisora.backbones.lora import add_lora
from anisora.backbones.tiny import TinyBackboneSpec, build_tiny_backbone
from anisora.diffusion.sampling import SamplerSpec, guided, rollout, sde_log_prob

SPEC = TinyBackboneSpec(num_layers=2, num_attention_heads=2, attention_head_dim=8, ffn_dim=32, text_dim=16,
                        text_layers=1, text_heads=2, spatial_factor=1)


def setup(lora: bool = False):
    bb = build_tiny_backbone(SPEC)
    if lora:
        add_lora(bb.denoiser, {"rank": 4, "alpha": 4.0, "targets": ["to_q", "to_v", "ffn.net.2"]})
        with torch.no_grad():
            for n, p in bb.denoiser.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    video = torch.rand(2, 3, 5, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(2, 5, 8, 8)
    mask[:, 0] = 1
    cond = bb.conditioning(["a red slime moves left", "a blue block moves up"], video * mask[:, None], mask)
    uncond = bb.conditioning(["", ""], video * mask[:, None], mask)
    return bb, cond, uncond, bb.latent_shape(5, 8, 8), bb.known_latents(video * mask[:, None], mask)


def test_gradients_reach_the_student_through_two_steps_with_checkpointing():
    bb, cond, uncond, shape, _ = setup(lora=True)
    assert apply_activation_checkpointing(bb, "full", 0.5)
    out = rollout(bb, cond, uncond, shape, SamplerSpec(name="euler", num_steps=2, guidance_scale=3.0),
                  seeds=[0, 1], grad=True, checkpoint=True)
    assert out.latents.requires_grad
    out.latents.square().mean().backward()
    grads = {n: p.grad for n, p in bb.denoiser.named_parameters() if "lora_" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for n, p in bb.denoiser.named_parameters() if "lora_" not in n)


def test_only_the_last_steps_carry_gradients_when_asked():
    bb, cond, _, shape, _ = setup(lora=True)
    out = rollout(bb, cond, None, shape, SamplerSpec(name="euler", num_steps=3, guidance_scale=1.0), seeds=[0, 1],
                  grad=True, grad_steps=1, record=True)
    assert [s.output.requires_grad for s in out.steps] == [False, False, True]


def test_trajectory_recording_and_stochastic_log_probabilities():
    bb, cond, uncond, shape, _ = setup()
    spec = SamplerSpec(name="flow_sde", num_steps=4, guidance_scale=2.0, noise_level=0.7)
    out = rollout(bb, cond, uncond, shape, spec, seeds=[0, 1], record=True)
    assert len(out.steps) == 4 and out.log_probs.shape == (2, 3)  # the last step is deterministic
    for step in out.steps[:-1]:
        torch.testing.assert_close(sde_log_prob(step.next_latents, step.mean, step.std), step.log_prob)
        assert step.latents.shape == (2, *shape) and step.timestep.shape == (2,)
    again = rollout(bb, cond, uncond, shape, spec, seeds=[0, 1]).latents
    assert torch.equal(again, out.latents)  # step noise comes from the per-sample seeds
    assert not torch.equal(again, rollout(bb, cond, uncond, shape, spec, seeds=[2, 3]).latents)


def test_exact_sigma_lists_and_renoising_few_step_sampler():
    bb, cond, _, shape, known = setup()
    sigmas = [1.0, 0.9375, 0.8333, 0.625]
    out = rollout(bb, cond, None, shape, SamplerSpec(name="euler", sigmas=sigmas, guidance_scale=1.0),
                  seeds=[0, 1], record=True)
    assert [round(float(s.timestep[0]), 1) for s in out.steps] == [1000.0, 937.5, 833.3, 625.0]
    spec = SamplerSpec(name="euler_renoise", sigmas=sigmas, guidance_scale=1.0, replace_known=True)
    a = rollout(bb, cond, None, shape, spec, seeds=[0, 1], known=known).latents
    assert torch.equal(a, rollout(bb, cond, None, shape, spec, seeds=[0, 1], known=known).latents)
    values, mask = known
    assert torch.equal(a[mask], values.float()[mask])  # guided latents end exactly as given


def test_one_cfg_function():
    c, u = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(guided(c, u, 1.0), c)
    torch.testing.assert_close(guided(c, u, 5.0), u + 5.0 * (c - u))


def test_the_guide_conditioning_changes_the_samples_without_latent_replacement():
    """With guided latents not re-imposed, the guide reaches the samples through the conditioning alone: a sampler
    that dropped it would give the same latents for two different guides."""
    bb, cond, uncond, shape, _ = setup()
    other = bb.conditioning(["a red slime moves left", "a blue block moves up"], torch.zeros(2, 3, 5, 8, 8),
                            cond.guide.new_zeros(2, 5, 8, 8))
    spec = SamplerSpec(name="euler", num_steps=2, guidance_scale=1.0, replace_known=False)
    with torch.no_grad():
        guided_out = rollout(bb, cond, None, shape, spec, seeds=[0, 1]).latents
        unguided = rollout(bb, other, None, shape, spec, seeds=[0, 1]).latents
    assert (guided_out - unguided).abs().mean() > 1e-3
