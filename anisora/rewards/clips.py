"""Clips from tensors: what evaluation and RL rollouts hold (pixels and (G, M) guide pairs) as scorer `Clip`s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from anisora.inference.pipeline import to_uint8_frames
from anisora.rewards.base import Clip


def guided_frames(guide: torch.Tensor, mask: torch.Tensor) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(indices, given uint8 (K, H, W, 3), keep bool (K, H, W)) of the frames a (G, M) pair guides.

    G is (3, F, H, W) in [-1, 1], M is (F, H, W); a frame is guided when any pixel of it is given."""
    indices = [int(i) for i in torch.nonzero(mask.flatten(1).amax(dim=1)).flatten()]
    given = to_uint8_frames(guide[None, :, indices])[0]
    return indices, given, mask[indices].cpu().numpy() > 0


def clip_from_pair(name: str, frames: np.ndarray, guide: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, prompt: str = "",
                   truth: dict[str, Any] | None = None) -> Clip:
    """One `Clip` from uint8 frames (F, H, W, 3) and the (G, M) pair it was generated from (None: unguided)."""
    if (guide is None) != (mask is None):
        raise ValueError(f"clip {name}: give both the guide video and its mask, or neither")
    if guide is None:
        return Clip(name=name, frames=np.asarray(frames), prompt=prompt, truth=truth)
    indices, given, keep = guided_frames(guide, mask)
    return Clip(name=name, frames=np.asarray(frames), prompt=prompt, guide_indices=indices, guide_frames=given,
                guide_keep=keep, truth=truth)


def clips_from_tensors(pixels: torch.Tensor, guides: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                       prompts: Sequence[str] | None = None, truths: Sequence[dict[str, Any] | None] | None = None,
                       names: Sequence[str] | None = None) -> list[Clip]:
    """A batch of decoded videos (B, 3, F, H, W) in [-1, 1] with their guides (B, 3, F, H, W) and masks
    (B, F, H, W) -> B clips, quantised to 8 bits as a saved video would be."""
    videos = to_uint8_frames(pixels)
    count = len(videos)
    for key, values in (("guides", guides), ("masks", masks), ("prompts", prompts), ("truths", truths),
                        ("names", names)):
        if values is not None and len(values) != count:
            raise ValueError(f"clips_from_tensors: {key} has {len(values)} entries for {count} videos")
    return [clip_from_pair(names[i] if names is not None else f"clip{i:03d}", videos[i],
                           None if guides is None else guides[i], None if masks is None else masks[i],
                           prompts[i] if prompts is not None else "", truths[i] if truths is not None else None)
            for i in range(count)]
