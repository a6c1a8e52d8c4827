"""The (guide video G, pixel mask M) pair: every control mode is one value of it.

G holds the given pixels (zeros elsewhere, i.e. mid-grey in [-1, 1]) and M is 1 where a pixel is
given. First frame, last frame, keyframes and (later) regions all build the same two tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def resolve_index(index: int, num_frames: int, key: str = "guide.frames") -> int:
    """A frame index that may count from the end (-1 = last frame)."""
    from anisora.config.errors import ConfigError

    resolved = index + num_frames if index < 0 else index
    if not 0 <= resolved < num_frames:
        raise ConfigError(key, f"frame index {index} is outside a clip of {num_frames} frames")
    return resolved


def guide_pair(frames: Sequence[tuple[int, torch.Tensor]], num_frames: int, height: int, width: int,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Place guide images (3, H, W) in [-1, 1] at frame indices -> G (3, F, H, W), M (F, H, W)."""
    video = torch.zeros(3, num_frames, height, width, dtype=dtype)
    mask = torch.zeros(num_frames, height, width, dtype=dtype)
    for index, image in frames:
        f = resolve_index(index, num_frames)
        video[:, f] = image.to(dtype)
        mask[f] = 1.0
    return video, mask


def pair_from_video(video: torch.Tensor, indices: Sequence[int],
                    region: tuple[float, float, float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the given frames of a clip (3, F, H, W) as the guide, optionally only inside a rectangle
    (x0, y0, x1, y1 as fractions of the width and height); used by training and benchmarks."""
    _, f, h, w = video.shape
    guide, mask = guide_pair([(i, video[:, i]) for i in indices], f, h, w, video.dtype)
    if region is not None:
        x0, y0, x1, y1 = region
        keep = torch.zeros(h, w, dtype=mask.dtype)
        top, left = round(y0 * h), round(x0 * w)
        keep[top : max(round(y1 * h), top + 1), left : max(round(x1 * w), left + 1)] = 1
        mask = mask * keep
        guide = guide * mask[None]
    return guide, mask
