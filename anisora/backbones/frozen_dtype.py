"""Frozen weights in the compute dtype: a LoRA base or a frozen text/image encoder is never updated, so it needs
no fp32 master copy. Under bf16 autocast the result is the same matmuls (autocast would cast the fp32 weight to
bf16 on every call anyway) for half the memory: Wan-14B LoRA fits one 80 GB GPU only this way.

The latent codec (VAE) keeps its own dtype (`model.vae_dtype`): its encode precision shapes the training targets.
"""

from __future__ import annotations

import torch
from torch import nn

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError

KEY = "trainer.frozen_dtype"
CHOICES = ("auto", "float32", "bfloat16")
SHARDED = ("fsdp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")


def resolve_frozen_dtype(setting: str, precision: str, strategy: str) -> torch.dtype:
    """auto: bf16 under bf16-mixed with unsharded weights, else fp32. FSDP flattens a unit's parameters into one
    tensor of one dtype and DeepSpeed casts the whole model itself, so bf16 frozen weights are refused there."""
    if setting not in CHOICES:
        raise ConfigError(KEY, f"expected one of {', '.join(CHOICES)}; got {setting!r}")
    if setting == "float32":
        return torch.float32
    mixed_bf16 = precision == "bf16-mixed"
    if setting == "auto":
        return torch.bfloat16 if mixed_bf16 and strategy not in SHARDED else torch.float32
    if not mixed_bf16:
        raise ConfigError(KEY, f"bfloat16 needs accelerator.precision=bf16-mixed (got {precision}): without "
                          "autocast, fp32 activations would meet bf16 weights")
    if strategy in SHARDED:
        raise ConfigError(KEY, f"bfloat16 cannot combine with strategy={strategy} (it shards or casts every "
                          "weight itself); use auto or float32")
    return torch.bfloat16


def frozen_parameters(backbone: BackboneAdapter) -> list[nn.Parameter]:
    """Parameters that never train: the denoiser's frozen ones (a LoRA base) and frozen text/image encoders. Frozen
    adapters (an EMA role's) stay as they are: they are small and average in full precision."""
    params = [p for n, p in backbone.denoiser.named_parameters() if not p.requires_grad and "lora_" not in n]
    for name in ("prompt_encoder", "image_encoder"):
        module = getattr(backbone, name, None)
        if isinstance(module, nn.Module):
            params.extend(p for p in module.parameters() if not p.requires_grad)
    return params


def cast_frozen_weights(backbone: BackboneAdapter, dtype: torch.dtype) -> int:
    """Cast frozen floating-point weights in place (the Parameter objects stay, so sharing survives); returns how
    many parameters changed dtype."""
    changed = 0
    for p in frozen_parameters(backbone):
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            changed += 1
    return changed


def keep_master_weights_fp32(backbone: BackboneAdapter) -> int:
    """Trainable weights and every LoRA adapter (an EMA role's too) in fp32: adapters added to a bf16 base take
    its dtype, and an optimizer stepping bf16 weights loses small updates. Returns how many changed dtype."""
    changed = 0
    for name, p in backbone.named_parameters():
        if p.is_floating_point() and p.dtype != torch.float32 and (p.requires_grad or "lora_" in name):
            p.data = p.data.float()
            changed += 1
    return changed
