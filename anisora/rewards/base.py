"""The one scorer interface: videos with their prompts and guides in, named scores per clip out.

evaluate.py reports these scores and rl_finetune.py optimises a weighted set of them, so every scorer (weight-free
dimensions, VBench's model-based dimensions, the synthetic world's ground truth, learned reward models) has the
same shape: `score(clips) -> one {dimension: value} dict per clip`. Higher is better for every dimension a scorer
names in `higher_is_better`; the others (errors) are reported but never maximised without a sign.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Clip:
    """One video to score, with what it was generated from."""

    name: str
    frames: np.ndarray  # (F, H, W, 3) uint8
    prompt: str = ""
    guide_indices: list[int] = field(default_factory=list)  # frames that were given as guides
    guide_frames: np.ndarray | None = None  # (K, H, W, 3) uint8: the given pixels of those frames
    guide_keep: np.ndarray | None = None  # (K, H, W) bool: where each guide frame was given
    truth: dict[str, Any] | None = None  # the synthetic world's ground truth (direction, speed, colour_rgb)
    fps: float | None = None  # frame rate, where known (VBench reads dynamic degree at about 8 fps)


class Scorer(ABC):
    """Scores clips on named dimensions; NaN where a dimension does not apply to a clip."""

    #: the dimensions `score` returns, in report order
    dimensions: tuple[str, ...] = ()
    #: the subset where larger is better (what a reward may maximise)
    higher_is_better: tuple[str, ...] = ()

    @abstractmethod
    def score(self, clips: Sequence[Clip]) -> list[dict[str, float]]:
        """One {dimension: value} dict per clip, in order."""
