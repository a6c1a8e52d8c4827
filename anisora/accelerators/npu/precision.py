"""Precision plugins that autocast on the NPU (Lightning's defaults autocast on CUDA)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from lightning.pytorch.plugins.precision import (
    DeepSpeedPrecision,
    FSDPPrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
)


class NPUFSDPPrecision(FSDPPrecision):
    """FSDP's precision plugin with the NPU as autocast device (the parent hard-codes "cuda")."""

    def forward_context(self) -> AbstractContextManager:
        if "mixed" in self.precision:
            dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
            return torch.autocast("npu", dtype=dtype)
        return super().forward_context()


def npu_precision_plugin(precision: str, fsdp: bool = False, deepspeed: bool = False) -> Precision:
    """The plugin for `accelerator.precision` on the NPU, passed explicitly so Lightning never picks CUDA AMP
    (DeepSpeed casts by its own config: its plugin has no autocast)."""
    if deepspeed:
        return DeepSpeedPrecision(precision)  # type: ignore[arg-type]
    if fsdp:
        return NPUFSDPPrecision(precision)  # type: ignore[arg-type]
    if precision in ("bf16-mixed", "16-mixed"):
        return MixedPrecision(precision, device="npu")  # type: ignore[arg-type]
    if precision in ("bf16-true", "16-true"):
        return HalfPrecision(precision)  # type: ignore[arg-type]
    return Precision()
