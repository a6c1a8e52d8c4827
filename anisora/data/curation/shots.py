"""Shot splitting while frames stream: PySceneDetect's detectors see each small frame once, and only the
frames of the shot in progress are kept (bounded for over-long shots), so memory does not grow with
the length of an episode."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector
from scenedetect.common import FrameTimecode


@dataclass
class Shot:
    """Frames [start, end) of a source; `frames` at analysis size (the first ones, at most the cap, all
    consecutive), `stills` at text size (every `stride`-th frame)."""

    start: int
    end: int
    frames: list[np.ndarray] = field(repr=False)
    stills: list[np.ndarray] = field(repr=False)


def make_detector(kind: str, threshold: float, min_content_val: float, window_width: int, min_frames: int):
    if kind == "adaptive":
        return AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_frames, window_width=window_width,
                                min_content_val=min_content_val)
    return ContentDetector(threshold=threshold, min_scene_len=min_frames)


def resized(frame: np.ndarray, height: int) -> np.ndarray:
    """Aspect-preserving downscale to `height` (never up); width kept even."""
    h, w = frame.shape[:2]
    if h <= height:
        return frame
    width = max(2, int(round(w * height / h / 2)) * 2)
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


class ShotSplitter:
    """Feed frames with `push`; finished shots come out of `push` and `finish`."""

    def __init__(self, detector, fps: float, analysis_height: int, still_height: int, max_frames: int,
                 stride: int, lag: int) -> None:
        self.detector, self.fps = detector, fps
        self.analysis_height, self.still_height = analysis_height, still_height
        self.max_frames, self.stride, self.lag = max(max_frames, 2), max(stride, 1), lag + 2
        self.start, self.count = 0, 0
        self.frames: list[tuple[int, np.ndarray]] = []
        self.stills: list[tuple[int, np.ndarray]] = []

    def _cut(self, at: int) -> Shot:
        shot = Shot(self.start, at, [f for i, f in self.frames if i < at], [f for i, f in self.stills if i < at])
        self.frames = [(i, f) for i, f in self.frames if i >= at]
        self.stills = [(i, f) for i, f in self.stills if i >= at]
        self.start = at
        return shot

    def push(self, frame: np.ndarray) -> list[Shot]:
        index = self.count
        self.count += 1
        small = resized(frame, self.analysis_height)
        self.frames.append((index, small))
        if (index - self.start) % self.stride == 0:
            self.stills.append((index, resized(frame, self.still_height)))
        # Past the cap keep only the most recent frames: a late cut may still claim them for the next shot.
        while len(self.frames) > self.max_frames + self.lag and self.frames[0][0] == self.start:
            del self.frames[self.max_frames]
        while len(self.stills) > self.max_frames // self.stride + 1 + self.lag:
            del self.stills[self.max_frames // self.stride + 1]
        cuts = self.detector.process_frame(FrameTimecode(index, self.fps), np.ascontiguousarray(small[..., ::-1]))
        return [self._cut(c.frame_num) for c in cuts if self.start < c.frame_num <= index]

    def finish(self) -> list[Shot]:
        shots = []
        if self.count:
            cuts = self.detector.post_process(FrameTimecode(self.count - 1, self.fps)) or []
            shots = [self._cut(c.frame_num) for c in cuts if self.start < c.frame_num < self.count]
            shots.append(self._cut(self.count))
        return shots


def split(frames: Iterable[np.ndarray], splitter: ShotSplitter) -> Iterator[Shot]:
    for frame in frames:
        yield from splitter.push(frame)
    yield from splitter.finish()
