"""The synthetic world's ground truth as a scorer: did the sprite move the right way, at the right speed, keep its
colour, and does the video keep its guides?

Only clips rendered by `anisora.data.synthetic` (or sampled from its captions) carry a truth; the truth-based
dimensions are NaN elsewhere, while guide fidelity and flicker apply to every clip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from anisora.evaluation.metrics import temporal_flickering
from anisora.evaluation.tracking import motion_from_track, track_sprite
from anisora.rewards.base import Clip, Scorer
from anisora.rewards.fidelity import guide_psnr_scores


def speed_score(speed_pred: float, speed_true: float) -> float:
    """1 at the true speed, falling linearly to 0 at an error as large as the true speed (a bounded reward);
    NaN when either speed is unknown, or the truth is a still sprite (no scale to compare with)."""
    if not (math.isfinite(speed_pred) and math.isfinite(speed_true)) or speed_true <= 0.0:
        return math.nan
    return max(0.0, 1.0 - abs(speed_pred - speed_true) / speed_true)


class GroundTruthScorer(Scorer):
    """Direction (1 right, 0 wrong or untracked), speed error (px/frame) and speed score against `truth`, the share
    of frames where the sprite's own colour is found (identity and colour kept), guide PSNR and flicker."""

    dimensions = ("direction_correct", "speed_error", "speed_score", "colour_consistency", "guide_psnr",
                  "guide_psnr_min", "temporal_flickering")
    higher_is_better = ("direction_correct", "speed_score", "colour_consistency", "guide_psnr", "guide_psnr_min",
                        "temporal_flickering")

    def score_one(self, clip: Clip) -> dict[str, float]:
        video = np.asarray(clip.frames)
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"clip {clip.name}: expected (F, H, W, 3) frames, got {tuple(video.shape)}")
        truth = clip.truth or {}
        colour = truth.get("colour_rgb")
        colour = tuple(int(c) for c in colour) if colour is not None else None
        track = track_sprite(video, colour)
        direction, speed = motion_from_track(track)
        speed_true = float(truth["speed"]) if truth.get("speed") is not None else math.nan
        true_direction = truth.get("direction")
        return {
            "direction_correct": math.nan if true_direction is None else float(direction == true_direction),
            "speed_error": abs(speed - speed_true),  # NaN unless both are known
            "speed_score": speed_score(speed, speed_true),
            "colour_consistency": float(np.isfinite(track).all(axis=1).mean()) if colour is not None else math.nan,
            **guide_psnr_scores(clip),
            "temporal_flickering": temporal_flickering(video) if len(video) >= 2 else math.nan,
        }

    def score(self, clips: Sequence[Clip]) -> list[dict[str, float]]:
        return [self.score_one(c) for c in clips]
