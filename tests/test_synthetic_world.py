"""The tiny anime world: deterministic, captioned, with ground truth, and a held-out split."""

from __future__ import annotations

import re

import numpy as np
import pytest

from anisora.data.synthetic import (
    DIRECTIONS,
    MOTION_SCORE_LEVELS,
    WorldConfig,
    benchmark_clips,
    make_clip,
    speed_for_motion_score,
)
from anisora.evaluation.tracking import motion_from_track, track_sprite

WORLD = WorldConfig(num_frames=9, height=16, width=16, sprite_size=6)
CAPTION = re.compile(r"^a (\w+) (\w+) moves (left|right|up|down) across the (\w+)\. "
                     r"aesthetic score: (\d\.\d)\. motion score: (\d\.\d)\.$")


def test_clips_are_deterministic_per_seed_and_index():
    a, b = make_clip(WORLD, 3, "train", 11), make_clip(WORLD, 3, "train", 11)
    assert np.array_equal(a.video, b.video) and a.caption == b.caption
    assert not np.array_equal(a.video, make_clip(WORLD, 3, "train", 12).video)


def test_caption_names_subject_colour_direction_and_scores():
    clip = make_clip(WORLD, 0, "train", 5)
    match = CAPTION.match(clip.caption)
    assert match, clip.caption
    colour, subject, direction, scene, aesthetic, motion = match.groups()
    truth = clip.truth
    assert (colour, subject, direction, scene) == (truth.colour, truth.subject, truth.direction, truth.scene)
    assert float(aesthetic) == truth.aesthetic_score and float(motion) == truth.motion_score


def test_truth_track_matches_what_is_drawn():
    for index in range(8):
        clip = make_clip(WORLD, 0, "train", index)
        track = track_sprite(clip.video, clip.truth.colour_rgb)
        direction, speed = motion_from_track(track)
        assert direction == clip.truth.direction
        assert abs(speed - clip.truth.speed) < 0.2
        assert clip.video.shape == (9, 16, 16, 3) and clip.video.dtype == np.uint8


def test_sprite_stays_inside_the_frame_at_the_highest_motion_score():
    for direction in DIRECTIONS:
        clip = make_clip(WORLD, 0, "benchmark", 0, motion_score=MOTION_SCORE_LEVELS[-1], direction=direction)
        half = WORLD.sprite_size / 2
        assert (clip.truth.track >= half - 1e-6).all() and (clip.truth.track <= 16 - half + 1e-6).all()


def test_speed_grows_with_motion_score():
    speeds = [speed_for_motion_score(WORLD, m) for m in MOTION_SCORE_LEVELS]
    assert speeds == sorted(speeds) and speeds[0] > 0


def test_slowest_speed_sets_the_lowest_motion_score_and_the_top_stays_at_full_speed():
    fastest = speed_for_motion_score(WORLD, MOTION_SCORE_LEVELS[-1])
    assert speed_for_motion_score(WORLD, MOTION_SCORE_LEVELS[0]) == pytest.approx(fastest / 3)  # default
    half = WorldConfig(num_frames=9, height=16, width=16, sprite_size=6, slowest_speed=0.5)
    assert speed_for_motion_score(half, MOTION_SCORE_LEVELS[0]) == pytest.approx(fastest / 2)
    assert speed_for_motion_score(half, MOTION_SCORE_LEVELS[-1]) == pytest.approx(fastest)


def test_benchmark_split_is_balanced_and_disjoint_from_training():
    bench = benchmark_clips(WORLD, 0, 32)
    assert sorted(c.truth.direction for c in bench) == sorted(DIRECTIONS * 8)
    train = {make_clip(WORLD, 0, "train", i).video.tobytes() for i in range(256)}
    assert not any(c.video.tobytes() in train for c in bench)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split: expected one of"):
        make_clip(WORLD, 0, "test", 0)
