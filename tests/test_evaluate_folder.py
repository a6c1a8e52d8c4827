"""evaluate.py videos=DIR: unreadable files are listed with their errors, the rest are scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_entry, task_config

from anisora.inference.video_io import write_mp4
from anisora.tasks import evaluate

BAD = {"corrupt.mp4": np.random.default_rng(1).bytes(4096), "empty.mp4": b""}


def tiny_clip(seed: int) -> np.ndarray:
    """Random uint8 frames shaped like the tiny synthetic world's clips (5 frames, 16x16)."""
    return np.random.default_rng(seed).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)


def bad_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in BAD.items():
        (folder / name).write_bytes(data)
    return folder


def run_in_process(videos: Path, out: Path) -> dict[str, float]:
    cfg = task_config("evaluate", [f"videos={videos}", "logger=none", "accelerator=cpu", f"paths.log_dir={out}",
                                   f"paths.output_dir={out / 'evaluate' / 'run'}"])
    return evaluate.run(cfg)


def test_bad_files_are_listed_and_the_good_ones_scored(tmp_path):
    videos = bad_files(tmp_path / "videos")
    for seed in (0, 1):
        write_mp4(videos / f"good{seed}.mp4", tiny_clip(seed))
    metrics = run_in_process(videos, tmp_path / "outputs")
    run_dir = tmp_path / "outputs" / "evaluate" / "run"
    assert metrics["num_clips"] == 2 and metrics["num_failed"] == 2
    lines = [json.loads(line) for line in (run_dir / "per_clip.jsonl").read_text().splitlines()]
    errors = {line["file"]: line["error"] for line in lines if "error" in line}
    assert sorted(errors) == sorted(BAD) and len(lines) == 4
    assert all(e.startswith("ValueError: video ") and "\n" not in e for e in errors.values()), errors
    report = (run_dir / "report.md").read_text()
    assert "Scored 2 of 4 files; 2 could not be read" in report and all(name in report for name in BAD)
    assert json.loads((run_dir / "metrics.json").read_text())["num_failed"] == 2


def test_a_folder_of_only_bad_files_exits_2_in_one_line_and_leaves_no_run_folder(tmp_path):
    videos = bad_files(tmp_path / "videos")
    log_dir = tmp_path / "outputs"
    result = run_entry("evaluate.py", f"videos={videos}", "logger=none", "accelerator=cpu", log_dir=log_dir)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: videos: none of the 2 .mp4 files in "), result.stderr
    assert not log_dir.exists()


def test_refused_in_process_run_leaves_no_record(tmp_path):
    """The record written before the refusal (config.yaml, run.json, evaluate.log) is removed with its folder."""
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(bad_files(tmp_path / "videos"), tmp_path / "outputs")
    assert exit_info.value.code == 2
    assert not (tmp_path / "outputs").exists()
