"""Denoiser roles over one base: adapters over one frozen base hold base + adapter parameters only, the teacher is
the base, switching roles keeps what trains, EMA follows its role, full copies where asked."""

from __future__ import annotations

import pytest
import torch

from anisora.backbones.lora import add_lora
from anisora.backbones.roles import Roles, role_specs
from anisora.backbones.tiny import TinyBackboneSpec, build_tiny_backbone
from anisora.config.errors import ConfigError

SPEC = TinyBackboneSpec(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=32, text_dim=16,
                        text_layers=1, text_heads=2, spatial_factor=1)
LORA = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["to_q", "to_k", "to_v", "to_out.0"]}


def backbone(lora: bool):
    bb = build_tiny_backbone(SPEC)
    if lora:
        add_lora(bb.denoiser, LORA)
    return bb


def inputs(bb):
    video = torch.rand(1, 3, 5, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(1, 5, 8, 8)
    mask[:, 0] = 1
    cond = bb.conditioning(["a red slime moves left"], video * mask[:, None], mask)
    noisy = torch.randn(1, *bb.latent_shape(5, 8, 8), generator=torch.Generator().manual_seed(1))
    return noisy, torch.tensor([600.0]), cond


def out(bb, roles, role):
    with torch.no_grad(), roles.use(role):
        return bb.denoise(*inputs(bb))


def perturb(params):
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))


def test_three_roles_over_one_base_hold_base_plus_adapters_and_the_teacher_is_the_base():
    bb = backbone(lora=True)
    base_params = sum(p.numel() for n, p in bb.denoiser.named_parameters() if "lora_" not in n)
    adapter = sum(p.numel() for n, p in bb.denoiser.named_parameters() if "lora_" in n)
    roles = Roles(bb, role_specs(["student", "critic", "teacher"], None), "lora_shared_base", LORA)
    total = sum(p.numel() for p in bb.denoiser.parameters()) + sum(p.numel() for p in roles.parameters())
    assert total == base_params + 2 * adapter  # one base, a student and a critic adapter; the teacher is free
    assert roles.adapters == {"student": "default", "critic": "critic", "teacher": None}
    student, critic = roles.parameters_of("student"), roles.parameters_of("critic")
    assert student and critic and not {id(p) for p in student} & {id(p) for p in critic}
    assert roles.parameters_of("teacher") == []
    perturb(student + critic)
    plain = build_tiny_backbone(SPEC)  # same init seed: the base weights without adapters
    with torch.no_grad():
        reference = plain.denoise(*inputs(plain))
    torch.testing.assert_close(out(bb, roles, "teacher"), reference)
    s, c = out(bb, roles, "student"), out(bb, roles, "critic")
    assert not torch.allclose(s, reference) and not torch.allclose(c, reference) and not torch.allclose(s, c)
    assert all(p.requires_grad for p in student + critic)  # switching roles leaves what trains as it was
    assert not any(p.requires_grad for n, p in bb.denoiser.named_parameters() if "lora_" not in n)
    torch.testing.assert_close(bb.denoise(*inputs(bb)).detach(), s)  # outside use(): the primary role


def test_ema_adapter_follows_its_role_and_merges_for_inference():
    bb = backbone(lora=True)
    roles = Roles(bb, role_specs(["student"], "student"), "lora_shared_base", LORA)
    assert roles.parameters_of("ema") == []  # EMA never reaches an optimizer
    torch.testing.assert_close(out(bb, roles, "ema"), out(bb, roles, "student"))
    student = roles.parameters_of("student")
    perturb(student)
    before = out(bb, roles, "ema")
    roles.update_ema(0.5)
    after, target = out(bb, roles, "ema"), out(bb, roles, "student")
    assert not torch.allclose(after, before) and not torch.allclose(after, target)
    for e, p in roles._pairs("ema"):
        assert e.dtype == torch.float32 and not e.requires_grad and p.requires_grad
    ema_out = out(bb, roles, "ema")
    roles.merge_into_primary("ema")
    torch.testing.assert_close(out(bb, roles, "student"), ema_out)


def test_full_roles_are_copies_and_frozen_weights_are_shared_with_the_ema():
    bb = backbone(lora=False)
    roles = Roles(bb, role_specs(["student", "critic", "teacher"], "student"), "full")
    assert set(roles.copies) == {"critic", "teacher", "ema"}
    assert roles.module("student") is bb.denoiser
    assert all(p.requires_grad for p in roles.module("critic").parameters())
    assert not any(p.requires_grad for p in roles.module("teacher").parameters())
    perturb(roles.parameters_of("student"))
    assert not torch.allclose(out(bb, roles, "student"), out(bb, roles, "teacher"))
    lora_bb = backbone(lora=True)  # a LoRA base under full copies: the EMA shares the frozen base tensors
    lora_roles = Roles(lora_bb, role_specs(["student"], "student"), "full")
    frozen = {id(p) for n, p in lora_bb.denoiser.named_parameters() if "lora_" not in n}
    ema = {id(p) for p in lora_roles.module("ema").parameters()}
    assert frozen <= ema


def test_role_configuration_errors_are_one_line():
    bb = backbone(lora=False)
    with pytest.raises(ConfigError, match=r"model\.lora\.rank"):
        Roles(bb, role_specs(["student", "teacher"], None), "lora_shared_base", None)
    with pytest.raises(ConfigError, match=r"method\.roles"):
        role_specs(["student", "oracle"], None)
    with pytest.raises(ConfigError, match=r"method\.roles"):
        role_specs(["teacher"], None)
    roles = Roles(bb, role_specs(["student"], None), "full")
    with pytest.raises(ConfigError, match="no role 'critic'"):
        roles.module("critic")
