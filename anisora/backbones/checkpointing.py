"""Activation checkpointing of the denoiser's blocks: activations of chosen blocks are recomputed in the
backward pass instead of kept, trading compute for memory (full: every block; selective: a share of them).

It goes through diffusers' own hook (`enable_gradient_checkpointing(fn)`: the model calls `fn(block, *args)` for
every block while gradients are on), so module names, state dicts and LoRA exports stay as they are, and it
works the same under DDP, FSDP (a wrapped block still answers the flag) and DeepSpeed.
"""

from __future__ import annotations

import math

from torch import nn
from torch.utils.checkpoint import checkpoint

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError

MODES = ("none", "full", "selective")
FLAG = "anisora_checkpoint"  # set on a block that is recomputed in backward


def evenly_spaced(count: int, fraction: float) -> list[int]:
    """count x fraction block indices (halves round up) spread over the stack (0.5 -> every other block)."""
    chosen = min(count, max(0, math.floor(count * fraction + 0.5)))
    return [math.floor(i * count / chosen) for i in range(chosen)] if chosen else []


class BlockCheckpointing:
    """The function diffusers calls for each block: recompute the flagged ones, run the others as usual."""

    def __call__(self, block: nn.Module, *args):
        if getattr(block, FLAG, False):
            return checkpoint(block.__call__, *args, use_reentrant=False)
        return block(*args)


def apply_activation_checkpointing(backbone: BackboneAdapter, mode: str, fraction: float = 0.5) -> list[int]:
    """Flag blocks for recomputation; returns their indices ([] for none)."""
    if mode not in MODES:
        raise ConfigError("trainer.activation_checkpointing", f"expected one of {', '.join(MODES)}; got {mode!r}")
    if mode == "none":
        return []
    blocks = backbone.denoiser_blocks()
    picked = list(range(len(blocks))) if mode == "full" else evenly_spaced(len(blocks), fraction)
    if not picked:
        return []
    if not hasattr(backbone.denoiser, "enable_gradient_checkpointing"):
        raise ConfigError("trainer.activation_checkpointing", f"{type(backbone.denoiser).__name__} is not a "
                          "diffusers model with gradient checkpointing")
    for index, block in enumerate(blocks):
        setattr(block, FLAG, index in picked)
    backbone.denoiser.enable_gradient_checkpointing(BlockCheckpointing())
    return picked


def checkpointed_blocks(backbone: BackboneAdapter) -> list[int]:
    return [i for i, b in enumerate(backbone.denoiser_blocks()) if getattr(b, FLAG, False)]

