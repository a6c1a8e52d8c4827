"""Evaluation: sprite tracking, clip metrics, aggregation and the written report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from anisora.evaluation.metrics import ClipScore, aggregate, psnr, score_clip, temporal_flickering
from anisora.evaluation.report import write_report
from anisora.evaluation.tracking import motion_from_track, track_sprite
from anisora.inference.video_io import read_video, write_mp4

RED, OUTLINE = (228, 52, 52), (24, 20, 32)
FRAMES, SIZE, SPRITE = 17, 32, 8
STARTS = {"right": (4, 12), "left": (20, 12), "down": (12, 4), "up": (12, 20)}  # top-left corner (x, y)
STEPS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def sprite_clip(direction: str) -> np.ndarray:
    """Flat background bands and a red 8x8 outlined square moving 1 px/frame in `direction`."""
    background = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    background[:10], background[10:20], background[20:] = (168, 196, 220), (120, 150, 110), (52, 60, 92)
    background[:, 28:] = (200, 160, 170)  # a vertical band too, so both axes cross colour edges
    video = np.repeat(background[None], FRAMES, axis=0)
    (x0, y0), (dx, dy) = STARTS[direction], STEPS[direction]
    for t in range(FRAMES):
        x, y = x0 + dx * t, y0 + dy * t
        video[t, y : y + SPRITE, x : x + SPRITE] = OUTLINE
        video[t, y + 1 : y + SPRITE - 1, x + 1 : x + SPRITE - 1] = RED
    return video


@pytest.mark.parametrize("direction", list(STEPS))
@pytest.mark.parametrize("colour", [RED, None], ids=["colour", "motion"])
def test_tracker_finds_direction_and_speed(direction, colour):
    track = track_sprite(sprite_clip(direction), colour)
    assert track.shape == (FRAMES, 2) and np.isfinite(track).all()
    found, speed = motion_from_track(track)
    assert found == direction
    assert abs(speed - 1.0) < 0.15


def test_colour_tracker_gives_the_fill_centre():
    track = track_sprite(sprite_clip("right"), RED)
    x0, y0 = STARTS["right"]
    centre = (SPRITE - 1) / 2  # fill covers offsets 1..6 of the 8-pixel box
    np.testing.assert_allclose(track[:, 0], x0 + centre + np.arange(FRAMES))
    np.testing.assert_allclose(track[:, 1], y0 + centre)


def test_tracker_still_works_after_an_mp4_round_trip(tmp_path):
    video = read_video(write_mp4(tmp_path / "clip.mp4", sprite_clip("up")))
    for colour in (RED, None):
        direction, speed = motion_from_track(track_sprite(video, colour))
        assert direction == "up" and abs(speed - 1.0) < 0.15


def test_absent_colour_gives_nan_track_and_no_motion():
    track = track_sprite(sprite_clip("left"), (0, 255, 0))
    assert np.isnan(track).all()
    direction, speed = motion_from_track(track)
    assert direction is None and math.isnan(speed)


def test_motion_from_track_fits_a_line_through_valid_frames():
    t = np.arange(10, dtype=np.float64)
    track = np.stack([20 - 0.5 * t, 3 + 0.2 * t], axis=1)
    track[[1, 4]] = np.nan  # missing frames are skipped, their time still counts
    direction, speed = motion_from_track(track)
    assert direction == "left"
    assert speed == pytest.approx(math.hypot(0.5, 0.2))
    direction, speed = motion_from_track(track[:2])  # one valid frame is not a line
    assert direction is None and math.isnan(speed)
    assert motion_from_track(np.ones((5, 2))) == (None, 0.0)


def test_psnr_known_values():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert psnr(a, a + 1) == pytest.approx(48.1308, abs=1e-3)  # 20 log10(255)
    assert psnr(a, a + 10) == pytest.approx(28.1308, abs=1e-3)
    assert psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(8, 4, 3\)"):
        psnr(a, a[:, :4])


def test_temporal_flickering_matches_vbench_definition():
    static = np.repeat(sprite_clip("right")[:1], 5, axis=0)
    assert temporal_flickering(static) == 1.0
    two = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    two[1, :2] = 102  # half the pixels change by 102: mean |diff| = 51
    assert temporal_flickering(two) == pytest.approx(1.0 - 51 / 255)
    down = two[::-1]  # uint8 differences must not wrap around
    assert temporal_flickering(down) == pytest.approx(1.0 - 51 / 255)
    with pytest.raises(ValueError, match="2 frames"):
        temporal_flickering(two[:1])


def test_temporal_flickering_of_8_bit_frames_equals_the_float64_formula():
    video = np.random.default_rng(0).integers(0, 256, (6, 12, 20, 3), dtype=np.uint8)
    reference = 1.0 - np.abs(np.diff(video.astype(np.float64), axis=0)).mean() / 255.0
    assert temporal_flickering(video) == pytest.approx(reference, abs=1e-12)
    assert temporal_flickering(video.astype(np.float32)) == pytest.approx(reference, abs=1e-12)


def test_score_clip_with_truth_and_guide():
    video = sprite_clip("down")
    guide = video[0].copy()
    guide[0, 0] = 0
    truth = {"direction": "down", "speed": 1.1, "colour_rgb": list(RED)}
    score = score_clip("c0", video, guide, truth)
    assert (score.name, score.direction_true, score.direction_pred) == ("c0", "down", "down")
    assert score.speed_pred == pytest.approx(1.0)
    assert score.speed_error == pytest.approx(0.1)
    assert score.first_frame_psnr == pytest.approx(psnr(video[0], guide))
    assert 0.9 < score.temporal_flickering < 1.0


def test_score_clip_without_truth_or_guide():
    score = score_clip("free", sprite_clip("left"), None, None)
    assert score.direction_true is None and score.direction_pred == "left"
    assert math.isnan(score.speed_true) and math.isnan(score.speed_error)
    assert math.isnan(score.first_frame_psnr)


def make_scores() -> list[ClipScore]:
    nan = math.nan
    return [
        ClipScore("a", "right", "right", 1.0, 1.2, 0.2, float("inf"), 0.98),
        ClipScore("b", "left", "up", 0.5, 0.4, 0.1, 30.0, 0.96),
        ClipScore("c", "up", None, 0.8, nan, nan, 20.0, 0.94),  # untracked: wrong direction
        ClipScore("d", None, "down", nan, 0.7, nan, nan, 0.92),  # no truth: not in accuracy or error
    ]


def test_aggregate_on_hand_made_scores():
    metrics = aggregate(make_scores())
    assert metrics["num_clips"] == 4
    assert metrics["direction_accuracy"] == pytest.approx(1 / 3)
    assert metrics["speed_error"] == pytest.approx(0.15)
    assert metrics["speed_true_mean"] == pytest.approx((1.0 + 0.5 + 0.8) / 3)
    assert metrics["speed_pred_mean"] == pytest.approx((1.2 + 0.4 + 0.7) / 3)
    assert metrics["first_frame_psnr"] == pytest.approx((100.0 + 30.0 + 20.0) / 3)
    assert metrics["first_frame_psnr_min"] == pytest.approx(20.0)
    assert metrics["temporal_flickering"] == pytest.approx(0.95)
    assert all(isinstance(v, float) for v in metrics.values())


def test_aggregate_of_nothing_is_nan_not_an_error():
    metrics = aggregate([])
    assert metrics["num_clips"] == 0
    assert math.isnan(metrics["direction_accuracy"]) and math.isnan(metrics["first_frame_psnr"])


def test_report_writes_every_file_and_metrics_json_round_trips(tmp_path):
    scores = make_scores()
    metrics = aggregate(scores)
    paths = write_report(tmp_path / "eval", metrics, scores, title="Tiny benchmark")
    assert set(paths) == {"metrics_json", "report_md", "chart_png", "per_clip_jsonl"}
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(
        ["metrics.json", "per_clip.jsonl", "report.md", "metrics.png"])

    text = paths["metrics_json"].read_text()
    loaded = json.loads(text)
    assert loaded == pytest.approx(metrics)
    assert list(loaded) == sorted(loaded)

    rows = [json.loads(line) for line in paths["per_clip_jsonl"].read_text().splitlines()]
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["first_frame_psnr"] == 100.0 and rows[2]["speed_pred"] is None  # strict JSON: no inf/NaN

    report = paths["report_md"].read_text()
    assert report.startswith("# Tiny benchmark")
    assert "| direction_accuracy | 0.3333 |" in report
    assert all(f"| {name} |" in report for name in "abcd")

    with Image.open(paths["chart_png"]) as chart:
        assert chart.format == "PNG" and chart.width > chart.height > 100


def test_report_writes_null_for_metrics_that_do_not_apply(tmp_path):
    metrics = aggregate([ClipScore("x", None, None, math.nan, math.nan, math.nan, math.nan, 1.0)])
    loaded = json.loads(write_report(tmp_path, metrics, [])["metrics_json"].read_text())
    assert loaded["direction_accuracy"] is None and loaded["temporal_flickering"] == 1.0


def test_report_has_the_anisora_and_vbench_layouts_with_the_key_behind_each_column():
    from anisora.evaluation.report import layout_lines

    lines = layout_lines({"subject_consistency": 0.95, "motion_smoothness_blend": 0.9, "speed_error": 1.0})
    assert "## VBench I2V dimensions" in lines and not any("AniSora" in line for line in lines)
    header, values = lines[lines.index("## VBench I2V dimensions") + 2], lines[-1]
    assert header.startswith("| Motion Smoothness (`motion_smoothness_blend`) | Motion Score | ")
    assert header.endswith("| Subject Consistency (`subject_consistency`) |")
    assert values == "| 0.9000 | n/a | n/a | n/a | n/a | n/a | n/a | 0.9500 |"
    learned = layout_lines({"visual_smooth": 0.5, "character_consistency": 0.25})
    assert learned[1] == "## AniSora benchmark (reward-model dimensions)" and learned[-1].startswith("| 0.5000 | n/a")
    assert layout_lines({"speed_error": 1.0}) == []
