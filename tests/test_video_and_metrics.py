"""Video files, the sprite tracker and the benchmark metrics on hand-made clips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from anisora.evaluation.metrics import ClipScore, aggregate, psnr, score_clip, temporal_flickering
from anisora.evaluation.report import write_report
from anisora.evaluation.tracking import motion_from_track, track_sprite
from anisora.inference.video_io import (
    read_image,
    read_video,
    write_contact_sheet,
    write_mp4,
    write_png_frames,
)

RED = (228, 52, 52)


def moving_square(direction: str, frames: int = 17, size: int = 32, speed: float = 1.0) -> np.ndarray:
    """Banded background and an outlined red 8x8 square moving one pixel per frame."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[:, : size // 2] = (168, 196, 220)
    video[:, size // 2 :] = (120, 150, 110)
    dx, dy = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}[direction]
    x0 = 4 if dx > 0 else (20 if dx < 0 else 12)
    y0 = 4 if dy > 0 else (20 if dy < 0 else 12)
    for f in range(frames):
        x, y = int(round(x0 + dx * speed * f)), int(round(y0 + dy * speed * f))
        video[f, y : y + 8, x : x + 8] = (24, 20, 32)
        video[f, y + 1 : y + 7, x + 1 : x + 7] = RED
    return video


def test_mp4_round_trip_is_close_and_atomic(tmp_path):
    video = moving_square("right")
    path = write_mp4(tmp_path / "clip.mp4", video, fps=8)
    back = read_video(path)
    assert back.shape == video.shape
    assert np.abs(back.astype(int) - video.astype(int)).mean() < 4
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary file left


def test_upscaled_mp4_keeps_colours_after_downscale(tmp_path):
    video = moving_square("up", size=16, frames=9)[:, :16, :16]
    back = read_video(write_mp4(tmp_path / "s.mp4", video, scale=8), downscale=8)
    assert back.shape == video.shape and psnr(back[0], video[0]) > 30


def test_mp4_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="even height and width, got 15x16"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=f"video {tmp_path / 'nope.mp4'} does not exist"):
        read_video(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError, match=f"image {tmp_path / 'nope.png'} does not exist"):
        read_image(tmp_path / "nope.png")


def test_png_frames_are_lossless_and_sheet_has_grid_size(tmp_path):
    video = moving_square("down", frames=5)
    paths = write_png_frames(tmp_path / "frames", video)
    assert [p.name for p in paths] == [f"frame_{i:04d}.png" for i in range(5)]
    assert all(np.array_equal(read_image(p), f) for p, f in zip(paths, video))
    sheet = read_image(write_contact_sheet(tmp_path / "sheet.png", video, columns=3, scale=2))
    assert sheet.shape == ((2 * 33 - 1) * 2, (3 * 33 - 1) * 2, 3)


def test_read_image_resizes_to_the_requested_size(tmp_path):
    write_png_frames(tmp_path, moving_square("left", frames=1))
    assert read_image(tmp_path / "frame_0000.png", size=(16, 24)).shape == (16, 24, 3)


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
@pytest.mark.parametrize("colour", [RED, None])
def test_tracker_finds_direction_and_speed(direction, colour):
    found, speed = motion_from_track(track_sprite(moving_square(direction), colour))
    assert found == direction
    assert abs(speed - 1.0) < 0.15


def test_untrackable_clip_has_no_direction():
    direction, speed = motion_from_track(track_sprite(np.zeros((5, 8, 8, 3), np.uint8), RED))
    assert direction is None and math.isnan(speed)


def test_psnr_and_flicker_known_values():
    a = np.full((4, 4, 3), 100, np.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(48.1308, abs=1e-3)
    with pytest.raises(ValueError, match=r"shapes differ: \(4, 4, 3\) vs \(2, 4, 3\)"):
        psnr(a, a[:2])
    assert temporal_flickering(np.stack([a, a, a])) == 1.0
    assert temporal_flickering(np.stack([a, a + 51])) == pytest.approx(0.8)


def test_score_and_aggregate():
    video = moving_square("right")
    good = score_clip("a", video, video[0], {"direction": "right", "speed": 1.0, "colour_rgb": list(RED)})
    assert good.direction_pred == "right" and good.first_frame_psnr == float("inf")
    wrong = ClipScore("b", "up", None, 1.0, math.nan, math.nan, 20.0, 0.9)
    metrics = aggregate([good, wrong])
    assert metrics["direction_accuracy"] == 0.5 and metrics["num_clips"] == 2
    assert metrics["first_frame_psnr"] == pytest.approx(60.0) and metrics["first_frame_psnr_min"] == 20.0
    assert metrics["speed_error"] == pytest.approx(good.speed_error)


def test_report_writes_every_file(tmp_path):
    video = moving_square("left")
    scores = [score_clip("a", video, video[0], {"direction": "left", "speed": 1.0, "colour_rgb": list(RED)})]
    metrics = aggregate(scores)
    paths = write_report(tmp_path, metrics, scores, title="Evaluation of test")
    assert json.loads(paths["metrics_json"].read_text()) == pytest.approx(metrics, nan_ok=True)
    assert "| direction_accuracy | 1.0000 |" in paths["report_md"].read_text()
    assert paths["chart_png"].stat().st_size > 1000
    assert json.loads(paths["per_clip_jsonl"].read_text().splitlines()[0])["direction_pred"] == "left"
