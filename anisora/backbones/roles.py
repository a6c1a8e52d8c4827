"""Named denoisers over one base: student, critic, teacher, policy, reference and ema.

Distillation needs a student, a critic (fake score) and a teacher (real score); RL a policy and a reference; SFT a
student and its EMA. Two layouts, chosen by `roles.mode`:

- `lora_shared_base`: one frozen base denoiser; every trainable role is its own peft LoRA adapter on it, the EMA of
  a role is one more adapter that follows it, and frozen roles (teacher, reference) are the base with adapters
  off. A 14B teacher/student/critic triple costs one base plus adapters.
- `full`: the first trainable role is the backbone's denoiser itself; other roles are full copies (frozen weights
  shared with the base where the role does not train them, so an EMA of a LoRA run costs its adapters).

Every role's weights are parameters of this module or of the backbone, so DDP/FSDP/DeepSpeed wrap them, Lightning
checkpoints save and resume them, and `export()` writes any one of them. `use(role)` points the backbone at a role
without reassigning a registered submodule (which sharded strategies refuse).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError

ROLE_NAMES = ("student", "critic", "teacher", "policy", "reference", "ema")
FROZEN_ROLES = ("teacher", "reference")  # the base as it was loaded
MODES = ("lora_shared_base", "full")
BASE_ADAPTER = "default"  # the adapter model.lora adds (diffusers' default name): the first trainable role's


@dataclass(frozen=True)
class RoleSpec:
    name: str
    trainable: bool
    follows: str | None = None  # ema: the role whose weights it averages


def role_specs(names: list[str], ema_of: str | None) -> list[RoleSpec]:
    """Specs for role names in order; `ema_of` adds an `ema` role following that role."""
    specs = []
    for name in names:
        if name not in ROLE_NAMES or name == "ema":
            raise ConfigError("method.roles", f"expected roles among {', '.join(ROLE_NAMES[:-1])}, got {name!r}")
        specs.append(RoleSpec(name, trainable=name not in FROZEN_ROLES))
    if ema_of is not None:
        if ema_of not in names:
            raise ConfigError("optimizer.ema_decay", f"EMA follows role {ema_of!r}, which this method does not have")
        specs.append(RoleSpec("ema", trainable=False, follows=ema_of))
    if not any(s.trainable for s in specs):
        raise ConfigError("method.roles", "a method needs at least one trainable role")
    return specs


def tuner_layers(denoiser: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]


def activate_adapter(layers: list[nn.Module], name: str | None) -> None:
    """Route every LoRA layer through adapter `name` (None: adapters off) without touching `requires_grad`,
    which peft's own switches reset (and which a critic and a student alternating must keep)."""
    for layer in layers:
        if name is None:
            layer._disable_adapters = True
        else:
            layer._active_adapter = [name]
            layer._disable_adapters = False


class Roles(nn.Module):
    """The denoiser roles of one method over `backbone` (see the module docstring)."""

    def __init__(self, backbone: BackboneAdapter, specs: list[RoleSpec], mode: str = "full",
                 lora: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError("method.roles_mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.specs = mode, {s.name: s for s in specs}
        self.copies = nn.ModuleDict()
        object.__setattr__(self, "backbone", backbone)  # not a submodule: the method owns the backbone
        self.adapters: dict[str, str | None] = {}
        if mode == "lora_shared_base":
            self._adapter_roles(lora, seed)
        else:
            self._full_roles()

    # ------------------------------------------------------------------ construction
    def _adapter_roles(self, lora: Mapping[str, Any] | None, seed: int) -> None:
        from anisora.backbones.lora import add_lora, lora_rank

        denoiser = self.backbone.denoiser
        if lora_rank(lora) == 0:
            raise ConfigError("model.lora.rank", "roles.mode=lora_shared_base needs LoRA adapters: set "
                              "model.lora.rank > 0, or roles.mode=full")
        base_free = BASE_ADAPTER in (getattr(denoiser, "peft_config", None) or {})  # model.lora added it
        for spec in self.specs.values():
            if not spec.trainable and spec.follows is None:
                self.adapters[spec.name] = None  # teacher / reference: the base with adapters off
                continue
            if spec.trainable and base_free:
                name, base_free = BASE_ADAPTER, False
            else:
                name = spec.name
                with warnings.catch_warnings():  # peft warns of a second adapter: that is the point here
                    warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                    add_lora(denoiser, lora, seed + len(self.adapters) + 1, adapter_name=name)
            self.adapters[spec.name] = name
        for spec in self.specs.values():
            if spec.follows is not None:  # an EMA adapter starts equal to the role it follows
                self._copy_adapter(self.adapters[spec.follows], self.adapters[spec.name])
        for name, p in denoiser.named_parameters():
            if "lora_" in name:
                p.requires_grad_(any(f".{a}." in name for s, a in self.adapters.items()
                                     if a is not None and self.specs[s].trainable))
        self._layers = tuner_layers(denoiser)
        activate_adapter(self._layers, self.adapters[self.primary])

    def _full_roles(self) -> None:
        base = self.backbone.denoiser
        shared = {id(p): p for p in base.parameters() if not p.requires_grad}
        trainable_seen = False
        for spec in self.specs.values():
            if spec.trainable and not trainable_seen:
                trainable_seen = True  # the first trainable role is the backbone's own denoiser
                continue
            if spec.trainable:
                self.copies[spec.name] = copy.deepcopy(base, memo=dict(shared))
            else:  # frozen copies: the teacher/reference as loaded, an EMA starting at its role's weights
                memo = dict(shared) if spec.follows is not None else {}
                self.copies[spec.name] = copy.deepcopy(base, memo=memo).requires_grad_(False)

    def _copy_adapter(self, src: str, dst: str) -> None:
        params = dict(self.backbone.denoiser.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if f".{dst}." in name:
                    p.copy_(params[name.replace(f".{dst}.", f".{src}.")])
                    p.requires_grad_(False)

    # ------------------------------------------------------------------ queries
    @property
    def primary(self) -> str:
        """The first trainable role (the one exported by default)."""
        return next(s.name for s in self.specs.values() if s.trainable)

    def __contains__(self, role: str) -> bool:
        return role in self.specs

    def denoisers(self) -> list[nn.Module]:
        """Every distinct denoiser module: the base and each role's copy (what device settings apply to)."""
        return [self.backbone.denoiser, *self.copies.values()]

    def module(self, role: str) -> nn.Module:
        """The module that computes `role` (the shared base denoiser in lora_shared_base mode)."""
        self._check(role)
        return self.copies[role] if role in self.copies else self.backbone.denoiser

    def parameters_of(self, role: str) -> list[nn.Parameter]:
        """The trainable parameters of `role` (its adapter, or its whole copy)."""
        self._check(role)
        if self.mode == "lora_shared_base":
            adapter = self.adapters[role]
            if adapter is None:
                return []
            return [p for n, p in self.backbone.denoiser.named_parameters() if f".{adapter}." in n and p.requires_grad]
        return [p for p in self.module(role).parameters() if p.requires_grad]

    def _check(self, role: str) -> None:
        if role not in self.specs:
            raise ConfigError("method.roles", f"this method has no role {role!r} (has {', '.join(self.specs)})")

    # ------------------------------------------------------------------ use
    @contextlib.contextmanager
    def use(self, role: str) -> Iterator[nn.Module]:
        """Inside the block the backbone denoises as `role`."""
        module = self.module(role)
        previous = self.backbone.__dict__.get("_active_denoiser")
        self.backbone.__dict__["_active_denoiser"] = module if module is not self.backbone.denoiser else None
        if self.mode == "lora_shared_base":
            activate_adapter(self._layers, self.adapters[role])
        try:
            yield module
        finally:
            self.backbone.__dict__["_active_denoiser"] = previous
            if self.mode == "lora_shared_base":
                activate_adapter(self._layers, self.adapters[self.primary])

    # ------------------------------------------------------------------ EMA
    def _pairs(self, role: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(ema, followed) parameter pairs for the EMA role `role`."""
        spec = self.specs[role]
        if self.mode == "lora_shared_base":
            params = dict(self.backbone.denoiser.named_parameters())
            dst, src = self.adapters[role], self.adapters[spec.follows]
            return [(p, params[n.replace(f".{dst}.", f".{src}.")]) for n, p in params.items() if f".{dst}." in n]
        followed = self.module(spec.follows)
        return [(e, p) for e, p in zip(self.module(role).parameters(), followed.parameters()) if p.requires_grad]

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay ema + (1 - decay) followed, for every EMA role (trainable weights only)."""
        for spec in self.specs.values():
            if spec.follows is not None:
                for e, p in self._pairs(spec.name):
                    e.lerp_(p.detach().to(e.dtype), 1.0 - decay)

    @torch.no_grad()
    def merge_into_primary(self, role: str) -> None:
        """Copy `role`'s weights into the primary role (inference and exports of an EMA)."""
        self._check(role)
        if role == self.primary:
            return
        if self.mode == "lora_shared_base":
            src, dst = self.adapters[role], self.adapters[self.primary]
            if src is None:
                raise ConfigError("method.roles", f"role {role!r} is the base with adapters off; nothing to merge")
            self._copy_adapter(src, dst)
            for p in self.parameters_of(self.primary):
                p.requires_grad_(True)
            return
        self.backbone.denoiser.load_state_dict(self.module(role).state_dict())

    # ------------------------------------------------------------------ export
    def export(self, role: str, dst: Path | str, overwrite: bool = False, sampler: Any = None) -> Path:
        """One role for people: LoRA safetensors (an adapter role) or a diffusers pipeline folder (a full role),
        both loadable by the stock pipelines, with the scheduler that reproduces `sampler` (a few-step grid)."""
        from anisora.backbones.export import export_lora, export_pipeline

        self._check(role)
        if self.mode == "lora_shared_base":
            adapter = self.adapters[role]
            if adapter is None:
                raise ConfigError("role", f"role {role!r} is the base with adapters off: export the base instead")
            return export_lora(self.backbone, dst, adapter_name=adapter, overwrite=overwrite, sampler=sampler)
        with self.use(role):  # the stock pipeline takes the active denoiser
            return export_pipeline(self.backbone, dst, sampler=sampler, overwrite=overwrite)
