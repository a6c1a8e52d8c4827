"""LoRA on the denoiser through peft: only the adapters train, the base weights stay frozen.

The adapters are peft's, added with diffusers' `add_adapter`, so `anisora.backbones.export.export_lora`
writes safetensors that a stock pipeline's `load_lora_weights` loads unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from anisora.backbones.base import BLOCK_LISTS
from anisora.config.errors import ConfigError

KEY = "model.lora"
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)  # what peft's LoRA adapts


def lora_rank(lora: Mapping[str, Any] | None) -> int:
    """0 (full fine-tuning) when the config has no LoRA or rank 0."""
    return int(lora.get("rank", 0)) if lora else 0


def layer_names(denoiser: nn.Module, limit: int = 12) -> list[str]:
    """A few LoRA-able layer names, relative to one block when the denoiser has a block list (for error lines)."""
    root = denoiser
    for name in BLOCK_LISTS:
        blocks = getattr(denoiser, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            root = blocks[0]
            break
    return [n for n, m in root.named_modules() if isinstance(m, nn.Linear)][:limit]


def check_targets(denoiser: nn.Module, targets: list[str]) -> None:
    """Every target suffix names at least one module, else one line with names that exist."""
    if not targets:
        raise ConfigError(f"{KEY}.targets", f"must name at least one module; e.g. {', '.join(layer_names(denoiser))}")
    modules = [(n, m) for n, m in denoiser.named_modules() if n]
    for target in targets:
        matched = [m for n, m in modules if n == target or n.endswith("." + target)]
        if not matched:
            raise ConfigError(f"{KEY}.targets", f"{target!r} matches no module of {type(denoiser).__name__}; "
                              f"layers of a block: {', '.join(layer_names(denoiser))}")
        if not any(isinstance(m, LAYER_TYPES) or hasattr(m, "base_layer") for m in matched):  # or adapted already
            raise ConfigError(f"{KEY}.targets", f"{target!r} names {type(matched[0]).__name__}, not a linear layer; "
                              f"layers of a block: {', '.join(layer_names(denoiser))}")


def add_lora(denoiser: nn.Module, lora: Mapping[str, Any] | None, seed: int = 0, adapter_name: str = "default") -> bool:
    """Adapters named `adapter_name` on the configured projections (initialised from `seed`, so every build is the
    same); False and nothing changed for full fine-tuning."""
    rank = lora_rank(lora)
    if rank == 0:
        return False
    assert lora is not None
    alpha, dropout = float(lora.get("alpha", rank)), float(lora.get("dropout", 0.0))
    if alpha <= 0:
        raise ConfigError(f"{KEY}.alpha", f"must be > 0; got {alpha!r}")
    targets = [str(t) for t in lora.get("targets") or []]
    check_targets(denoiser, targets)
    if not hasattr(denoiser, "add_adapter"):
        raise ConfigError(KEY, f"{type(denoiser).__name__} is not a diffusers model with peft support")
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            denoiser.add_adapter(config, adapter_name=adapter_name)
        except ValueError as ex:  # a target that is no linear/conv layer
            raise ConfigError(f"{KEY}.targets", " ".join(str(ex).split())[:200]) from None
    keep_input_dtype_under_autocast(denoiser)
    return True


def keep_input_dtype_under_autocast(denoiser: nn.Module) -> None:
    """peft casts each adapted layer's input to the adapter's dtype. With fp32 adapters on a bf16 base under bf16
    autocast that is a full-size fp32 copy of every adapted activation (for Wan-14B about 1.6 G values a block:
    q, k, v and out of both attentions, both feed-forward inputs), which autocast at once casts back to bf16 for
    the matmul: the same numbers, for about 12 bytes of memory traffic a value in the forward, the recompute and
    the backward. Under autocast the cast is skipped; outside it peft's cast stays, so fp32 adapters still run
    on a bf16 input there."""
    for module in denoiser.modules():
        if hasattr(module, "lora_A") and callable(getattr(type(module), "_cast_input_dtype", None)):
            module._cast_input_dtype = CastOutsideAutocast(module)


class CastOutsideAutocast:
    """A LoRA layer's input cast that leaves the input as it is under autocast (an object, not a closure, so the
    model still pickles and deep-copies)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def __call__(self, x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        if x is not None and x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
            return x  # (the meta device, where FLOPs are counted, has no autocast to ask)
        return type(self.layer)._cast_input_dtype(self.layer, x, dtype)


def lora_parameters(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights by name (what a LoRA run trains)."""
    return {n: p for n, p in denoiser.named_parameters() if "lora_" in n}
