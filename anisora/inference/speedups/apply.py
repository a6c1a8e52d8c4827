"""`SpeedupSpec` (the `speedup` config group) and the order in which speed-ups are applied."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import torch

from anisora.config.errors import ConfigError
from anisora.config.schema import SpeedupConfig

log = logging.getLogger("anisora.speedup")


@dataclass
class SpeedupSpec(SpeedupConfig):
    """The `speedup` group's values as a plain object: fields and defaults are SpeedupConfig's (one source)."""

    @classmethod
    def from_config(cls, cfg: Any) -> SpeedupSpec:
        if cfg is None:
            return cls()
        data = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"speedup.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(known))}")
        return cls(**data)


def problems(spec: SpeedupSpec, device: torch.device) -> list[tuple[str, str]]:
    """(key, why) for every requested speed-up this device cannot run, found before any model is built."""
    from anisora.inference.speedups import caches, fp8, offload

    out: list[tuple[str, str]] = []
    if spec.cache not in caches.KINDS:
        out.append(("speedup.cache", f"expected one of {', '.join(caches.KINDS)}; got {spec.cache!r}"))
    elif spec.cache == "mag" and not spec.mag_ratios:
        out.append(("speedup.mag_ratios", "cache=mag needs the model's calibrated magnitude ratios "
                    "(a list with one value per sampling step)"))
    if spec.fp8:
        why = fp8.unavailable(device)
        if why:
            out.append(("speedup.fp8", why))
    if spec.lowvram:
        why = offload.unavailable(device)
        if why:
            out.append(("speedup.lowvram", why))
    if spec.compile and spec.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
        out.append(("speedup.compile_backend", f"unknown torch.compile backend {spec.compile_backend!r}"))
    return out


def check_speedups(spec: SpeedupSpec, device: torch.device) -> list[str]:
    """Fail fast (one line) on a speed-up that cannot apply here, unless best_effort; returns skipped keys."""
    found = problems(spec, device)
    if found and not spec.best_effort:
        key, why = found[0]
        raise ConfigError(key, why)
    for key, why in found:
        log.warning("skipping %s (best_effort): %s", key, why)
    return [key for key, _ in found]


def apply_speedups(backbone: torch.nn.Module, spec: SpeedupSpec, device: torch.device) -> list[str]:
    """Apply the speed-ups in a working order (quantise, offload, split the sequence, compile, cache hooks);
    returns the names of those applied."""
    from anisora.inference.speedups import caches, compile, fp8, offload

    skipped = set(check_speedups(spec, device))
    applied: list[str] = []
    denoiser = backbone.denoiser
    if spec.fp8 and "speedup.fp8" not in skipped:
        fp8.quantize(denoiser)
        applied.append("fp8")
    if spec.lowvram and "speedup.lowvram" not in skipped:
        offload.enable(backbone, device, spec.lowvram_blocks_per_group)
        applied.append("lowvram")
    if spec.context_parallel > 1:
        from anisora.inference.speedups import context_parallel

        context_parallel.enable(denoiser, spec.context_parallel, spec.context_parallel_kind)
        applied.append(f"context_parallel={spec.context_parallel}")
    if spec.compile and "speedup.compile_backend" not in skipped:  # before the caches: their hooks stay outside
        compile.compile_blocks(denoiser, spec.compile_backend, spec.compile_mode)
        applied.append("compile")
    if spec.cache != "none" and not {"speedup.cache", "speedup.mag_ratios"} & skipped:
        caches.enable(backbone, spec)
        applied.append(f"cache={spec.cache}")
    if applied:
        log.info("speed-ups: %s", ", ".join(applied))
    return applied
