"""float8 linear layers (dynamic per-row activation scales, float8 weights) through torchao."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from anisora.accelerators.devices import compute_capability


def unavailable(device: torch.device) -> str | None:
    """Why fp8 cannot run here, or None."""
    if importlib.util.find_spec("torchao") is None:
        return "needs torchao (pip install torchao)"
    capability = compute_capability(device)
    if capability is None or capability < (8, 9):
        return f"needs a GPU with float8 matmuls (compute capability 8.9 or newer); this run is on {device}"
    return None


QUANTIZED = "_anisora_fp8"  # set on a denoiser whose blocks hold float8 weights


def quantize(denoiser: nn.Module) -> bool:
    """Every Linear inside the transformer blocks becomes float8 (embeddings and the output head stay bf16).
    Quantising is one-way; a denoiser already quantised is left as it is (returns False)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    from anisora.inference.speedups.compile import repeated_blocks

    if getattr(denoiser, QUANTIZED, False):
        return False
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for block in repeated_blocks(denoiser):
        quantize_(block, config)
    setattr(denoiser, QUANTIZED, True)
    return True
