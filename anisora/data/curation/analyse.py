"""One source, start to end: decode, split into shots, measure every shot. Runs inside a worker process;
the result is a plain dict (the source's part file) so it pickles and serialises as it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anisora.data.curation import hooks, scores
from anisora.data.curation.frames import SourceError, open_frames
from anisora.data.curation.shots import Shot, ShotSplitter, make_detector, split


@dataclass(frozen=True)
class Settings:
    """Everything that decides a part file's content (thresholds are not here: they apply later)."""

    analysis_height: int = 128
    detector: str = "adaptive"
    shot_threshold: float = 3.0
    min_content_val: float = 15.0
    window_width: int = 2
    min_shot_s: float = 0.5
    max_s: float = 20.0
    flow_method: str = "farneback"
    flow_pairs: int = 8
    flow_percentile: float = 99.0
    reference_height: int = 480
    raft_weights: str | None = None
    raft_module: str | None = None
    text_frames: int = 6
    text_height: int = 360
    text_persistence: float = 0.5
    text_polarity: str = "bright"
    text_weights: str | None = None
    text_module: str | None = None
    border_frames: int = 8
    border_luma: float = 20.0
    static_frames: int = 8
    pixel_delta: float = 10.0
    hash_frames: int = 4
    aesthetic_weights: str | None = None
    aesthetic_module: str | None = None
    aesthetic_frames: int = 4
    caption_model: str | None = None
    caption_prompt: str = ""
    caption_tokens: int = 64

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r(value: float) -> float:
    return round(float(value), 5)


def measure(shot: Shot, fps: float, s: Settings, models: hooks.Models) -> dict[str, Any]:
    """Scores of one shot, plus what duplicate detection needs (hashes, mean colour)."""
    frames = shot.frames
    analysed_height = frames[0].shape[0]
    flow = models.flow or scores.opencv_flow(s.flow_method)
    stills = [shot.stills[i] for i in scores.spread(len(shot.stills), s.text_frames)]
    if models.text is not None:
        text = float(np.mean([models.text(f) for f in stills]))
    else:
        text = scores.text_coverage(stills, s.text_persistence, s.text_polarity)
    values = {
        "duration_s": (shot.end - shot.start) / fps,
        "motion": scores.motion(frames, flow, s.flow_pairs, s.flow_percentile, s.reference_height / analysed_height),
        "text": text,
        "border": scores.border_fraction(frames, s.border_frames, s.border_luma),
        "change": scores.changed_fraction(frames, s.static_frames, s.pixel_delta),
    }
    if models.aesthetic is not None:
        picked = [shot.stills[i] for i in scores.spread(len(shot.stills), s.aesthetic_frames)]
        values["aesthetic"] = float(models.aesthetic(np.stack(picked)))
    clip: dict[str, Any] = {
        "start": shot.start, "end": shot.end, "scores": {k: _r(v) for k, v in values.items()},
        "hashes": scores.clip_hashes(frames, s.hash_frames), "colour": scores.mean_colour(frames, s.hash_frames),
    }
    if models.caption is not None:
        clip["model_caption"] = models.caption(shot.stills[len(shot.stills) // 2])
    return clip


def analyse(path: Path, s: Settings) -> dict[str, Any]:
    """The part of one source: {"clips": [...], "fps", "width", "height"} or {"error": one line}."""
    cv2.setNumThreads(1)  # one process per core does the parallel work
    try:
        info, frames = open_frames(path)
        min_frames = max(1, int(round(s.min_shot_s * info.fps)))
        detector = make_detector(s.detector, s.shot_threshold, s.min_content_val, s.window_width, min_frames)
        splitter = ShotSplitter(detector, info.fps, s.analysis_height, s.text_height,
                                max_frames=int(np.ceil(s.max_s * info.fps)) + 1,
                                stride=max(1, int(round(info.fps / 2))), lag=max(s.window_width, min_frames))
        models = hooks.load_models(s)
        clips = [measure(shot, info.fps, s, models) for shot in split(frames, splitter)]
    except SourceError as ex:
        return {"error": str(ex)}
    except (MemoryError, cv2.error, ValueError, RuntimeError, OSError) as ex:
        return {"error": f"analysis failed: {' '.join(str(ex).split())[:300] or type(ex).__name__}"}
    if not clips:
        return {"error": "no frames"}
    return {"fps": _r(info.fps), "width": info.width, "height": info.height, "clips": clips}
