"""Rectified-flow noise levels: the time shift and the training draw (the objective itself is
anisora.diffusion.objectives.FlowMatching)."""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3/Wan: more steps at high noise when shift > 1."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(batch: int, shift: float, generator: torch.Generator, scheme: str = "uniform",
                  logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Training noise levels in (0, 1): uniform or logit-normal, then shifted."""
    if scheme == "uniform":
        u = torch.rand(batch, generator=generator)
    elif scheme == "logit_normal":
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(batch, generator=generator))
    else:
        raise ValueError(f"objective.timestep_sampling: expected uniform or logit_normal, got {scheme!r}")
    return shift_sigmas(u.clamp(1e-5, 1 - 1e-5), shift)
