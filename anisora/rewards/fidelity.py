"""Guide fidelity: how well a video keeps the pixels it was given (PSNR and SSIM at every guided frame, inside the
kept region of each), so first-frame, keyframe and region guidance are all measured the same way."""

from __future__ import annotations

import math

import cv2
import numpy as np

from anisora.evaluation.metrics import PSNR_CAP, guide_fidelity
from anisora.rewards.base import Clip

SSIM_SIGMA = 1.5  # Gaussian window of Wang et al. (2004): 11 x 11, sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (H, W) of two uint8 images (H, W, 3), averaged over the colour channels."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x, y = a.astype(np.float64), b.astype(np.float64)

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (11, 11), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    out = ((2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
    return out.reshape(*a.shape[:2], -1).mean(axis=-1)


def masked_ssim(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Mean SSIM over the pixels where `keep` (H, W) is True (everywhere when None); NaN if none are kept."""
    values = ssim_map(a, b)
    if keep is None:
        return float(values.mean())
    return float(values[keep].mean()) if np.any(keep) else math.nan


def _guides(clip: Clip) -> tuple[np.ndarray, np.ndarray] | None:
    if not clip.guide_indices or clip.guide_frames is None:
        return None
    keep = clip.guide_keep if clip.guide_keep is not None else np.ones(clip.guide_frames.shape[:3], dtype=bool)
    return clip.guide_frames, keep


def _mean_and_min(prefix: str, values: list[float]) -> dict[str, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {prefix: math.nan, f"{prefix}_min": math.nan}
    return {prefix: float(np.mean(values)), f"{prefix}_min": float(min(values))}


def guide_psnr_scores(clip: Clip) -> dict[str, float]:
    """guide_psnr (mean) and guide_psnr_min over the guided frames, each capped at PSNR_CAP dB; NaN without guides."""
    guides = _guides(clip)
    if guides is None:
        return _mean_and_min("guide_psnr", [])
    per_frame = guide_fidelity(clip.frames, *guides, clip.guide_indices)
    return _mean_and_min("guide_psnr", [min(v, PSNR_CAP) for v in per_frame.values()])


def guide_ssim_scores(clip: Clip) -> dict[str, float]:
    """guide_ssim (mean) and guide_ssim_min over the guided frames, inside each kept region; NaN without guides."""
    guides = _guides(clip)
    if guides is None:
        return _mean_and_min("guide_ssim", [])
    given, keep = guides
    return _mean_and_min("guide_ssim", [masked_ssim(clip.frames[f], given[k], keep[k])
                                        for k, f in enumerate(clip.guide_indices)])
