"""Clip metrics: motion direction and speed against ground truth, guide fidelity, VBench flicker."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from anisora.evaluation.tracking import motion_from_track, track_sprite

PSNR_CAP = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (peak 255)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def temporal_flickering(video: np.ndarray) -> float:
    """VBench's temporal flickering: 1 - mean |frame_t+1 - frame_t| / 255 over uint8 frames."""
    if len(video) < 2:
        raise ValueError("temporal_flickering needs at least 2 frames")
    diffs = np.abs(np.diff(video.astype(np.float64), axis=0))
    return float(1.0 - diffs.mean() / 255.0)


@dataclass
class ClipScore:
    name: str
    direction_true: str | None
    direction_pred: str | None
    speed_true: float
    speed_pred: float
    speed_error: float
    first_frame_psnr: float
    temporal_flickering: float

    def to_json(self) -> dict:
        return asdict(self)


def score_clip(name: str, video: np.ndarray, guide_first_frame: np.ndarray | None, truth: dict | None) -> ClipScore:
    """Score one generated clip (uint8 (F, H, W, 3)); `truth` may hold direction, speed, colour_rgb."""
    truth = truth or {}
    colour = tuple(truth["colour_rgb"]) if truth.get("colour_rgb") is not None else None
    direction, speed = motion_from_track(track_sprite(video, colour))
    speed_true = float(truth.get("speed", math.nan))
    return ClipScore(
        name=name,
        direction_true=truth.get("direction"),
        direction_pred=direction,
        speed_true=speed_true,
        speed_pred=speed,
        speed_error=abs(speed - speed_true),
        first_frame_psnr=psnr(video[0], guide_first_frame) if guide_first_frame is not None else math.nan,
        temporal_flickering=temporal_flickering(video),
    )


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def aggregate(scores: list[ClipScore]) -> dict[str, float]:
    """Flat benchmark metrics; an untracked clip counts as a wrong direction."""
    with_truth = [s for s in scores if s.direction_true is not None]
    psnrs = [min(s.first_frame_psnr, PSNR_CAP) for s in scores if not math.isnan(s.first_frame_psnr)]
    out = {
        "num_clips": float(len(scores)),
        "direction_accuracy": (sum(s.direction_pred == s.direction_true for s in with_truth) / len(with_truth)
                               if with_truth else math.nan),
        "speed_error": _mean([s.speed_error for s in scores]),
        "speed_true_mean": _mean([s.speed_true for s in scores]),
        "speed_pred_mean": _mean([s.speed_pred for s in scores]),
        "first_frame_psnr": _mean(psnrs),
        "first_frame_psnr_min": float(min(psnrs)) if psnrs else math.nan,
        "temporal_flickering": _mean([s.temporal_flickering for s in scores]),
    }
    return out
