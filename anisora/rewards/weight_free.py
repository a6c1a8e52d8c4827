"""Every dimension that needs no learned weights, as one scorer: flicker, dynamic degree, the motion-smoothness
blend proxy, static detection and guide fidelity (PSNR, SSIM)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anisora.data.curation.scores import opencv_flow
from anisora.evaluation.metrics import temporal_flickering
from anisora.rewards.base import Clip, Scorer
from anisora.rewards.fidelity import guide_psnr_scores, guide_ssim_scores
from anisora.rewards.motion import dynamic_scores, motion_smoothness_blend, static_scores


class WeightFreeScorer(Scorer):
    """Weight-free dimensions; `flow_method` is OpenCV's farneback or dis, `static` curation's static-content
    settings (frames, pixel_delta, min: see `anisora.rewards.motion.static_scores`)."""

    dimensions = ("temporal_flickering", "dynamic_degree", "flow_magnitude", "motion_smoothness_blend",
                  "changed_fraction", "static", "guide_psnr", "guide_psnr_min", "guide_ssim", "guide_ssim_min")
    higher_is_better = ("temporal_flickering", "dynamic_degree", "flow_magnitude", "motion_smoothness_blend",
                        "changed_fraction", "guide_psnr", "guide_psnr_min", "guide_ssim", "guide_ssim_min")

    def __init__(self, flow_method: str, static_frames: int, static_pixel_delta: float,
                 static_min_changed: float | None) -> None:
        self.flow = opencv_flow(flow_method)
        self.static = (static_frames, static_pixel_delta, static_min_changed)

    def score_one(self, clip: Clip) -> dict[str, float]:
        frames = np.asarray(clip.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
            raise ValueError(f"clip {clip.name}: expected (F >= 2, H, W, 3) frames, got {tuple(frames.shape)}")
        return {
            "temporal_flickering": temporal_flickering(frames),
            **dynamic_scores(frames, self.flow, clip.fps),
            "motion_smoothness_blend": motion_smoothness_blend(frames),
            **static_scores(frames, *self.static),
            **guide_psnr_scores(clip),
            **guide_ssim_scores(clip),
        }

    def score(self, clips: Sequence[Clip]) -> list[dict[str, float]]:
        return [self.score_one(c) for c in clips]
