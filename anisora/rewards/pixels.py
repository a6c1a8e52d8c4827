"""Frames to a tower's pixels: the normalisations of the tower families and VBench's resize-and-crop rule, shared
by the VBench dimensions and the learned reward model's towers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def to_pixels(frames: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float],
              crop: bool) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> normalised (T, 3, ...) floats: shorter side resized to `size` (bicubic), then a centre
    crop to size x size when `crop` (CLIP), else the aspect ratio kept (DINO)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                      align_corners=False, antialias=True).clamp(0, 1)
    if crop:
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top : top + size, left : left + size]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
