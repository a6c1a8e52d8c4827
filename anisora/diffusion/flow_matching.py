"""Rectified-flow training targets: x_s = (1 - s) x0 + s noise, the model predicts noise - x0."""

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


def noisy_sample(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_sigma, velocity target) for flow matching."""
    s = sigmas.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise, noise - x0


def timesteps_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The DiT's timestep input, on the same 0..1000 scale diffusers' flow schedulers use."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def motion_loss_weight(x0: torch.Tensor, strength: float, residual: bool = False) -> torch.Tensor | None:
    """Per-location loss weight 1 + strength * (how far each latent frame is from the first one,
    scaled to [0, 1] per sample): what moves is a small part of a clip but decides its motion.
    `residual`: the latents after the first already hold that difference."""
    if strength <= 0:
        return None
    delta = torch.cat([torch.zeros_like(x0[:, :, :1]), x0[:, :, 1:]], dim=2) if residual else x0 - x0[:, :, :1]
    change = delta.abs().mean(dim=1, keepdim=True)  # (B, 1, T, h, w)
    peak = change.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
    return 1.0 + strength * change / peak


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """MSE, with an optional broadcastable weight normalised to mean 1 (the loss scale stays comparable)."""
    err = (pred - target).square()
    if weight is None:
        return err.mean()
    weight = weight.expand_as(err)
    return (err * weight).sum() / weight.sum()


def guide_loss_weight(slot_mask: torch.Tensor, strength: float) -> torch.Tensor | None:
    """1 + strength on latent cells whose frames were given as guides (B, 1, T, h, w): the model is
    asked to reproduce given keyframes, not only to move what is free."""
    if strength <= 0:
        return None
    return 1.0 + strength * slot_mask


def combine_weights(*weights: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of the extra weight of each term (each is 1 + something), or None when none applies."""
    present = [w for w in weights if w is not None]
    if not present:
        return None
    return 1.0 + sum(w - 1.0 for w in present)
