"""Folding a pixel mask M (B, F, H, W) to a backbone's latent mask layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, F, H, W) -> (B, F, h, w): a latent cell counts as given when most of its pixels are given."""
    if mask.shape[-2:] == (height, width):
        return mask
    pooled = F.adaptive_avg_pool2d(mask.flatten(0, 1)[:, None].float(), (height, width))
    return (pooled[:, 0] >= 0.5).to(mask.dtype).view(*mask.shape[:2], height, width)


def fold_mask_wan(mask: torch.Tensor, temporal_factor: int, height: int, width: int) -> torch.Tensor:
    """Wan2.1 I2V layout: the first frame repeated `temporal_factor` times, then groups of frames
    become channels -> (B, temporal_factor, T, h, w) with T = (F - 1) / temporal_factor + 1."""
    b, f = mask.shape[:2]
    if (f - 1) % temporal_factor:
        raise ValueError(f"mask has {f} frames; expected {temporal_factor}n+1")
    small = downsample_mask(mask, height, width)
    first = small[:, :1].expand(b, temporal_factor, height, width)
    stacked = torch.cat([first, small[:, 1:]], dim=1)  # (B, F + tf - 1, h, w)
    t = stacked.shape[1] // temporal_factor
    return stacked.view(b, t, temporal_factor, height, width).transpose(1, 2).contiguous()


def latent_slot_mask(mask: torch.Tensor, temporal_factor: int, height: int, width: int) -> torch.Tensor:
    """(B, F, H, W) -> (B, 1, T, h, w): 1 where any frame of a latent slot is given at that cell (frame 0
    alone in slot 0, then groups of `temporal_factor`, as Wan's and CogVideoX's VAEs group them)."""
    return fold_mask_wan(mask, temporal_factor, height, width).amax(dim=1, keepdim=True)
