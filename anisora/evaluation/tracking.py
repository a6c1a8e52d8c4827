"""Finding the moving sprite in a clip, and its direction and speed."""

from __future__ import annotations

import numpy as np

MIN_PIXELS = 3


def colour_centroids(video: np.ndarray, colour_rgb: tuple[int, int, int], tolerance: float) -> np.ndarray:
    """Centre of the pixels close to a known fill colour, per frame (NaN when too few)."""
    dist = np.linalg.norm(video.astype(np.float32) - np.asarray(colour_rgb, np.float32), axis=-1)
    return _centroids(dist < tolerance)


def motion_centroids(video: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """Centre of the pixels that differ from the static background (the per-pixel temporal median)."""
    frames = video.astype(np.float32)
    background = np.median(frames, axis=0)
    return _centroids(np.abs(frames - background).max(axis=-1) > threshold)


def _centroids(masks: np.ndarray) -> np.ndarray:
    out = np.full((masks.shape[0], 2), np.nan, dtype=np.float64)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs) >= MIN_PIXELS:
            out[i] = xs.mean(), ys.mean()
    return out


def track_sprite(video: np.ndarray, colour_rgb: tuple[int, int, int] | None = None,
                 tolerance: float = 60.0) -> np.ndarray:
    """(F, 2) sprite centres (x, y). The colour tracker is preferred when the fill colour is known:
    it ignores background changes; the motion tracker needs no knowledge of the clip."""
    if colour_rgb is not None:
        return colour_centroids(video, colour_rgb, tolerance)
    return motion_centroids(video)


def motion_from_track(track: np.ndarray) -> tuple[str | None, float]:
    """Least-squares velocity of a track -> (dominant direction, speed in pixels per frame)."""
    valid = ~np.isnan(track).any(axis=1)
    if valid.sum() < 2:
        return None, float("nan")
    t = np.nonzero(valid)[0].astype(np.float64)
    vx = np.polyfit(t, track[valid, 0], 1)[0]
    vy = np.polyfit(t, track[valid, 1], 1)[0]
    names = ("right", "left", "down", "up")
    direction = names[int(np.argmax([vx, -vx, vy, -vy]))]
    return direction, float(np.hypot(vx, vy))
