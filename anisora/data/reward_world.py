"""A labelled reward dataset from the tiny world: each group is one clip's prompt and first frame with the true
video and corrupted ones (wrong direction, wrong speed, static, flicker of random strength, a colour change from a
random frame on), every video scored by the ground-truth scorer against the true clip's truth. The corruption is
the row's `label`, so reports break the scores down by it. Videos are stored as .npy (exact pixels: the labels were
computed on them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anisora.data.synthetic import (
    DIRECTIONS,
    MOTION_SCORE_LEVELS,
    SPRITE_COLOURS,
    WorldConfig,
    make_clip,
)
from anisora.io import atomic_write_text
from anisora.rewards.base import Clip
from anisora.rewards.ground_truth import GroundTruthScorer

CORRUPTIONS = ("truth", "wrong_direction", "wrong_speed", "static", "flicker", "wrong_colour")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
#: the ground-truth dimensions the reward model learns from this data
DIMENSIONS = ("direction_correct", "speed_score", "colour_consistency", "guide_psnr", "temporal_flickering")


def corrupted_video(world: WorldConfig, seed: int, split: str, index: int, kind: str) -> np.ndarray:
    """Clip `index`'s video, or a corruption of it that keeps its scene, sprite and (where it can) start."""
    base = make_clip(world, seed, split, index)
    truth = base.truth
    rng = np.random.default_rng([seed, index, CORRUPTIONS.index(kind)])
    if kind == "truth":
        return base.video
    if kind == "wrong_direction":
        other = OPPOSITE[truth.direction] if rng.random() < 0.5 else str(
            rng.choice([d for d in DIRECTIONS if d not in (truth.direction, OPPOSITE[truth.direction])]))
        return make_clip(world, seed, split, index, motion_score=truth.motion_score, direction=other).video
    if kind == "wrong_speed":
        levels = [m for m in MOTION_SCORE_LEVELS if abs(m - truth.motion_score) >= 1.0]
        return make_clip(world, seed, split, index, motion_score=float(rng.choice(levels)),
                         direction=truth.direction).video
    if kind == "static":
        return np.repeat(base.video[:1], len(base.video), axis=0)
    if kind == "flicker":
        strength = rng.uniform(15.0, 45.0)
        offsets = strength * np.where(np.arange(len(base.video)) % 2, 1.0, -1.0)
        offsets[0] = 0.0  # the guide frame stays as given
        return np.clip(base.video.astype(np.float32) + offsets[:, None, None, None], 0, 255).astype(np.uint8)
    if kind == "wrong_colour":  # the sprite turns another colour from a random frame on: a graded identity drift
        other = str(rng.choice([c for c in SPRITE_COLOURS if c != truth.colour]))
        recoloured = make_clip(world, seed, split, index, motion_score=truth.motion_score, direction=truth.direction,
                               colour=other).video
        onset = int(rng.integers(1, len(base.video)))
        return np.concatenate([base.video[:onset], recoloured[onset:]])
    raise ValueError(f"corruption: expected one of {', '.join(CORRUPTIONS)}, got {kind!r}")


def write_reward_world(out: str | Path, world: WorldConfig, seed: int, groups: int, split: str = "train",
                       corruptions: Sequence[str] = CORRUPTIONS) -> Path:
    """`groups` groups of len(corruptions) clips under `out`: videos/, guides/ and reward.jsonl; returns the file."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "guides").mkdir(exist_ok=True)
    scorer = GroundTruthScorer()
    rows = []
    for g in range(groups):
        base = make_clip(world, seed, split, g)
        guide = base.video[0]
        guide_name = f"guides/{split}{g:05d}.npy"
        np.save(out / guide_name, guide)
        truth = base.truth.to_json()
        for kind in corruptions:
            video = corrupted_video(world, seed, split, g, kind)
            name = f"videos/{split}{g:05d}_{kind}.npy"
            np.save(out / name, video)
            clip = Clip(name=name, frames=video, prompt=base.caption, guide_indices=[0], guide_frames=guide[None],
                        truth=truth)
            scores = scorer.score([clip])[0]
            rows.append({"id": f"{split}{g:05d}_{kind}", "video": name, "prompt": base.caption, "guide": guide_name,
                         "group": f"{split}{g:05d}", "label": kind,
                         "scores": {d: _finite_or_none(scores[d]) for d in DIMENSIONS}})
    path = out / "reward.jsonl"
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
