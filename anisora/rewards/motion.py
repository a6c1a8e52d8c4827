"""Weight-free motion dimensions: VBench's dynamic degree on classical optical flow, a blend-interpolation proxy of
VBench's motion smoothness, and a static-video detector (the collapse that few-step students and RL drift into)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from anisora.data.curation.scores import FlowFn, changed_fraction

VBENCH_FPS = 8.0  # VBench's dynamic degree reads the video at about 8 frames per second
TOP_FRACTION = 0.05  # a pair's motion: the mean of its largest 5 % flow magnitudes
THRESHOLD_PER_256 = 6.0  # a pair moves when that mean exceeds 6 px per 256 px of the shorter side
MOVING_PAIRS_PER_16 = 4.0  # a video moves when round(4 N / 16) pairs move (N: frames read)


def vbench_frame_step(fps: float | None) -> int:
    """Every k-th frame, k = round(fps / 8) (at least 1), as VBench samples a video; all frames when fps is unknown."""
    return 1 if fps is None else max(1, round(fps / VBENCH_FPS))


def top_flow_magnitude(flow: np.ndarray) -> float:
    """VBench's per-pair motion: the mean of the largest int(H W 0.05) flow magnitudes of an (H, W, 2) flow."""
    magnitude = np.sqrt(flow[..., 0].astype(np.float64) ** 2 + flow[..., 1].astype(np.float64) ** 2).ravel()
    cut = int(magnitude.size * TOP_FRACTION)
    if cut == 0:
        return math.nan
    return float(np.mean(np.partition(magnitude, magnitude.size - cut)[magnitude.size - cut:]))


def dynamic_threshold(height: int, width: int) -> float:
    """VBench's per-pair threshold: 6 * min(H, W) / 256 pixels."""
    return THRESHOLD_PER_256 * min(height, width) / 256.0


def moving_pairs_needed(frames_read: int) -> int:
    """VBench's count rule round(4 N / 16), with Python's round (half to even) as VBench has it."""
    return round(MOVING_PAIRS_PER_16 * frames_read / 16.0)


def is_dynamic(pair_motion: Sequence[float], height: int, width: int, frames_read: int) -> bool:
    """True when at least `moving_pairs_needed` pairs exceed `dynamic_threshold` (strictly)."""
    threshold = dynamic_threshold(height, width)
    return sum(m > threshold for m in pair_motion) >= moving_pairs_needed(frames_read)


def pair_motion(frames: np.ndarray, flow: FlowFn, step: int = 1) -> list[float]:
    """top_flow_magnitude of every consecutive pair of the frames read every `step` frames."""
    picked = frames[::step]
    return [top_flow_magnitude(flow(a, b)) for a, b in zip(picked[:-1], picked[1:])]


def dynamic_scores(frames: np.ndarray, flow: FlowFn, fps: float | None = None) -> dict[str, float]:
    """dynamic_degree (1 moving, 0 static, VBench's rule) and flow_magnitude (the mean per-pair motion in px at the
    video's own size, a continuous companion); NaN for a clip of fewer than 2 frames read."""
    step = vbench_frame_step(fps)
    motion = pair_motion(frames, flow, step)
    if not motion:
        return {"dynamic_degree": math.nan, "flow_magnitude": math.nan}
    height, width = frames.shape[1:3]
    read = len(frames[::step])
    return {"dynamic_degree": float(is_dynamic(motion, height, width, read)),
            "flow_magnitude": float(np.mean(motion))}


def motion_smoothness_blend(frames: np.ndarray) -> float:
    """Weight-free proxy of VBench's motion smoothness: each odd frame with two even neighbours is predicted as
    the rounded mean of those neighbours (VBench uses the AMT interpolation network here), and the score is
    (255 - mean |frame - prediction|) / 255. A linear blend ghosts moving edges, so this proxy reads lower than
    AMT on fast motion; it ranks smooth against jittery video, and is exact for linear brightness changes."""
    frames = np.asarray(frames)
    odd = range(1, len(frames) - 1, 2)
    if not odd:
        return math.nan
    errors = []
    for i in odd:
        blend = np.rint((frames[i - 1].astype(np.float64) + frames[i + 1].astype(np.float64)) / 2.0)
        errors.append(float(np.mean(np.abs(frames[i].astype(np.float64) - blend))))
    return float((255.0 - np.mean(errors)) / 255.0)


def static_scores(frames: np.ndarray, samples: int, pixel_delta: float, min_changed: float | None) -> dict[str, float]:
    """changed_fraction (mean share of pixels whose grey level moves by more than `pixel_delta` between `samples`
    frames spread over the clip) and static (1 when that share is below `min_changed`, curation's rule for a
    static clip; NaN when no limit is set)."""
    share = changed_fraction(list(frames), samples, pixel_delta)
    return {"changed_fraction": share, "static": math.nan if min_changed is None else float(share < min_changed)}
