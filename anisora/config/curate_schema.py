"""Typed schema of `anisora-data curate` (conf/curate.yaml).

Measurement settings (shots.*, the sampling counts, the detector settings) decide what a source's
part file holds, so changing one redoes the sources; thresholds (min/max values) are applied when the
manifest is assembled, so changing one only rewrites the manifest and report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from anisora.config.schema import StaticConfig, bounded, choice


@dataclass
class ShotsConfig:
    """Shot splitting with PySceneDetect, on frames decoded here (so gif and webp work too)."""

    detector: str = choice("adaptive", "content")
    threshold: float = bounded(3.0, 0.0)  # adaptive: ratio to the neighbours' mean; content: 27 is scenedetect's
    min_content_val: float = bounded(15.0, 0.0)  # adaptive: a cut also needs this much raw content change
    window_width: int = bounded(2, 1)  # adaptive: frames on each side of the candidate
    min_shot_s: float = bounded(0.5, 0.0)  # no cut closer than this to the previous one


@dataclass
class DurationConfig:
    min_s: float = bounded(2.0, 0.0)  # AniSora keeps clips of 2 to 20 s
    max_s: float = bounded(20.0, 0.0)


@dataclass
class MotionConfig:
    """Optical flow magnitude in px/frame, scaled to a frame `reference_height` pixels high."""

    method: str = choice("farneback", "dis")
    pairs: int = bounded(8, 1)  # consecutive frame pairs per clip, spread evenly
    percentile: float = bounded(99.0, 50.0, 100.0)  # of the per-pixel magnitude, per pair (100 = AniSora's max)
    reference_height: int = bounded(480, 16)
    min: Optional[float] = bounded(0.5, 0.0)  # too still below this; null: no limit
    max: Optional[float] = bounded(None, 0.0)  # too fast / blurry above this; null: no limit
    raft_weights: Optional[str] = None  # a RAFT checkpoint; replaces the OpenCV flow
    raft_module: Optional[str] = None  # "package.module:factory": factory(weights) -> flow(a, b) -> (H, W, 2)


@dataclass
class TextConfig:
    """Burnt-in text: fraction of the frame area covered by text boxes that persist across the clip."""

    frames: int = bounded(6, 1)
    height: int = bounded(360, 32)  # frames are analysed at most this high
    polarity: str = choice("bright", "both", "dark")  # glyph strokes lighter (subtitles) or darker than around
    persistence: float = bounded(0.5, 0.0, 1.0)  # a pixel counts when text covers it in this share of the frames
    max: Optional[float] = bounded(0.02, 0.0, 1.0)  # coverage limit (margin: conf/curate.yaml); null: none
    weights: Optional[str] = None  # a text detector checkpoint; replaces the weight-free detector
    module: Optional[str] = None  # "package.module:factory": factory(weights) -> coverage(frame RGB) -> float


@dataclass
class BorderConfig:
    """Letterboxing / pillarboxing: edge rows and columns that stay near-black in every sampled frame."""

    frames: int = bounded(8, 1)
    luma: float = bounded(20.0, 0.0, 255.0)  # a row is black when its 98th-percentile luma stays below this
    max: Optional[float] = bounded(0.05, 0.0, 1.0)  # rejected above this fraction of the frame area


@dataclass
class DuplicateConfig:
    """Exact and near duplicates over all clips: DCT perceptual hashes of a few frames per clip."""

    enabled: bool = True
    frames: int = bounded(4, 1)
    max_distance: float = bounded(10.0, 0.0, 64.0)  # mean Hamming distance (of 64 bits per frame) of a duplicate
    max_colour_distance: float = bounded(24.0, 0.0)  # and their mean colours (RGB) this close


@dataclass
class ResolutionConfig:
    min_short_side: int = bounded(0, 0)  # px; 0: no limit
    min_fps: float = bounded(0.0, 0.0)  # 0: no limit


@dataclass
class AestheticConfig:
    """Scored only with a model: `weights` and `module` ("package.module:factory", factory(weights) ->
    score(frames uint8 (N, H, W, 3)) -> float)."""

    weights: Optional[str] = None
    module: Optional[str] = None
    frames: int = bounded(4, 1)
    min: Optional[float] = bounded(None, 0.0)  # rejected below this; null: no limit


@dataclass
class CaptionConfig:
    """Captions: a sidecar (<stem>.txt, or <stem>.json with "caption") or a local vision-language model,
    ending with AniSora's "aesthetic score: A. motion score: M."."""

    enabled: bool = True
    model: Optional[str] = None  # a local transformers vision-language model folder (used when no sidecar)
    prompt: str = "Describe this anime clip in one sentence."
    max_new_tokens: int = bounded(64, 1)
    scores: bool = True  # add the score suffix
    aesthetic_default: float = bounded(5.5, 0.0)  # the suffix's aesthetic score when no aesthetic model is given
    # motion score = piecewise-linear in the motion score (px/frame at motion.reference_height), clamped at the ends
    motion_px: list[float] = field(default_factory=lambda: [0.0, 1.0, 3.0, 6.0, 12.0, 24.0])
    motion_scores: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])


@dataclass
class CurateTaskConfig:
    task_name: str = "curate"
    input: str = MISSING  # a folder (searched recursively) or a text file listing videos, one per line
    out: str = MISSING  # manifest.jsonl, report.md, histograms/, parts/ (the resume state)
    workers: int = bounded(2, 1)  # processes; 1 runs in this process
    progress: bool = True
    analysis_height: int = bounded(128, 16)  # shots, motion, borders, change and hashes are measured this high
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    duration: DurationConfig = field(default_factory=DurationConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    border: BorderConfig = field(default_factory=BorderConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    duplicate: DuplicateConfig = field(default_factory=DuplicateConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
