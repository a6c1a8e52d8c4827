"""Activation checkpointing of the denoiser's blocks: activations of chosen blocks are recomputed in the
backward pass instead of kept, trading compute for memory (full: every block; selective: a share of them;
ops: every block, but only its cheap element-wise work; matmul and attention outputs are kept).

`ops` is selective activation recomputation in the Megatron sense: norms, rotary embeddings, modulation and
activations hold most of a block's activation memory but little of its FLOPs, so recomputing them frees most
of the memory for a few per cent of step time, where `full` pays a whole extra forward pass.

It goes through diffusers' own hook (`enable_gradient_checkpointing(fn)`: the model calls `fn(block, *args)` for
every block while gradients are on), so module names, state dicts and LoRA exports stay as they are, and it
works the same under DDP, FSDP (a wrapped block still answers the flag) and DeepSpeed.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError

MODES = ("none", "full", "selective", "ops")
FLAG = "anisora_checkpoint"  # set on a block that is recomputed in backward


@functools.cache
def _compute_heavy_ops() -> frozenset:
    """The aten ops whose outputs `ops` keeps: matrix products and every fused attention kernel (built once: the
    policy asks for every op of every recomputed block)."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu", "_flash_attention_forward", "_efficient_attention_forward",
             "convolution")
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def keep_compute_heavy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpoint policy: keep what is expensive to recompute, recompute the element-wise rest."""
    return CheckpointPolicy.MUST_SAVE if op in _compute_heavy_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def evenly_spaced(count: int, fraction: float) -> list[int]:
    """count x fraction block indices (halves round up) spread over the stack (0.5 -> every other block)."""
    chosen = min(count, max(0, math.floor(count * fraction + 0.5)))
    return [math.floor(i * count / chosen) for i in range(chosen)] if chosen else []


class BlockCheckpointing:
    """The function diffusers calls for each block: recompute the flagged ones, run the others as usual."""

    def __init__(self, ops_only: bool = False) -> None:
        self.ops_only = ops_only

    def __call__(self, block: nn.Module, *args):
        if not getattr(block, FLAG, False):
            return block(*args)
        if self.ops_only:
            context = functools.partial(create_selective_checkpoint_contexts, keep_compute_heavy)
            return checkpoint(block.__call__, *args, use_reentrant=False, context_fn=context)
        return checkpoint(block.__call__, *args, use_reentrant=False)


def apply_activation_checkpointing(backbone: BackboneAdapter, mode: str, fraction: float = 0.5,
                                   denoiser: torch.nn.Module | None = None) -> list[int]:
    """Flag blocks of the denoiser (or of a role's copy, `denoiser`) for recomputation; returns their indices."""
    if mode not in MODES:
        raise ConfigError("trainer.activation_checkpointing", f"expected one of {', '.join(MODES)}; got {mode!r}")
    if mode == "none":
        return []
    denoiser = backbone.denoiser if denoiser is None else denoiser
    blocks = backbone.denoiser_blocks(denoiser)
    picked = list(range(len(blocks))) if mode in ("full", "ops") else evenly_spaced(len(blocks), fraction)
    if not picked:
        return []
    if not hasattr(denoiser, "enable_gradient_checkpointing"):
        raise ConfigError("trainer.activation_checkpointing", f"{type(denoiser).__name__} is not a "
                          "diffusers model with gradient checkpointing")
    for index, block in enumerate(blocks):
        setattr(block, FLAG, index in picked)
    denoiser.enable_gradient_checkpointing(BlockCheckpointing(ops_only=mode == "ops"))
    return picked


def checkpointed_blocks(backbone: BackboneAdapter) -> list[int]:
    return [i for i, b in enumerate(backbone.denoiser_blocks()) if getattr(b, FLAG, False)]

