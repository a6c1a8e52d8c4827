"""Per-location loss weights shared by every method's denoising loss, whatever the objective."""

from __future__ import annotations

import torch


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


def per_sample_weight(weight: torch.Tensor | None, per_sample: torch.Tensor | None) -> torch.Tensor | None:
    """A location weight times a per-sample weight (B,), either of which may be absent."""
    if per_sample is None:
        return weight
    scale = per_sample.view(-1, 1, 1, 1, 1)
    return scale if weight is None else weight * scale


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """MSE, with an optional broadcastable weight normalised to mean 1 (the loss scale stays comparable)."""
    err = (pred - target).square()
    if weight is None:
        return err.mean()
    weight = weight.expand_as(err)
    return (err * weight).sum() / weight.sum()


def weighted_mse_per_sample(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """`weighted_mse` of each sample on its own -> (B,): preference losses compare samples, not batches."""
    err = (pred - target).square().flatten(1)
    if weight is None:
        return err.mean(dim=1)
    weight = weight.expand_as(pred).flatten(1)
    return (err * weight).sum(dim=1) / weight.sum(dim=1)
