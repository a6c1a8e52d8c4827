"""evaluate.py benchmark=FILE: rows of videos with prompts, guide frames at indices, a region mask and an action
label are scored with their guides; every dimension is broken down by label; bad rows fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anisora.data.synthetic import WorldConfig, make_clip
from anisora.inference.video_io import encode_png, write_mp4
from anisora.tasks import evaluate


def benchmark(folder):
    folder.mkdir(parents=True)
    rows = []
    for i, (label, direction) in enumerate((("run", "right"), ("run", "left"), ("jump", "up"))):
        clip = make_clip(WorldConfig(), 0, "benchmark", i, motion_score=3.0, direction=direction)
        write_mp4(folder / f"c{i}.mp4", clip.video)
        (folder / f"c{i}_first.png").write_bytes(encode_png(clip.video[0]))
        (folder / f"c{i}_last.png").write_bytes(encode_png(clip.video[-1]))
        rows.append({"video": f"c{i}.mp4", "prompt": clip.caption, "label": label,
                     "frames": [{"image": f"c{i}_first.png", "at": 0}, {"image": f"c{i}_last.png", "at": -1}]})
    still = np.zeros((32, 32, 3), np.uint8)  # the jump clip's guides only hold in the left half
    still[:, :16] = 255
    (folder / "left.png").write_bytes(encode_png(still))
    rows[2]["mask"] = "left.png"
    (folder / "broken.mp4").write_bytes(b"not a video")
    rows.append({"video": "broken.mp4", "prompt": "", "label": "jump"})
    (folder / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "bench.jsonl"


def run(tmp_path, file):
    from conftest import task_config

    out = tmp_path / "outputs" / "evaluate" / "run"
    cfg = task_config("evaluate", [f"benchmark={file}", "metrics=[weight_free]", "logger=none", "accelerator=cpu",
                                   f"paths.log_dir={tmp_path / 'outputs'}", f"paths.output_dir={out}"])
    return evaluate.run(cfg), out


def test_benchmark_rows_are_scored_with_their_guides_and_broken_down_by_label(tmp_path):
    metrics, out = run(tmp_path, benchmark(tmp_path / "bench"))
    assert metrics["num_clips"] == 3 and metrics["num_failed"] == 1
    per_label = json.loads((out / "per_label.json").read_text())
    assert list(per_label) == ["run", "jump"]
    assert per_label["run"]["num_clips"] == 2 and per_label["jump"]["num_clips"] == 1
    rows = {r["name"]: r for r in map(json.loads, (out / "per_clip.jsonl").read_text().splitlines())
            if "error" not in r}
    assert rows["c0"]["label"] == "run" and set(rows["c0"]["guide_psnr"]) == {"0", "16"}
    assert min(rows["c0"]["guide_psnr"].values()) > 30  # the guides are the clip's own frames (through H.264)
    assert rows["c2"]["first_frame_psnr"] is None  # a region-masked first frame is not a whole first-frame guide
    run_flicker = np.mean([rows["c0"]["dimensions"]["temporal_flickering"],
                           rows["c1"]["dimensions"]["temporal_flickering"]])
    assert per_label["run"]["temporal_flickering"] == pytest.approx(run_flicker)
    assert "## Per label" in (out / "report.md").read_text()


def test_a_bad_benchmark_row_fails_in_one_line_before_anything_is_written(tmp_path, capsys):
    file = benchmark(tmp_path / "bench")
    rows = file.read_text().splitlines()
    rows[1] = json.dumps({"video": "c1.mp4", "frames": [{"image": "nope.png", "at": 0}]})
    file.write_text("\n".join(rows) + "\n")
    with pytest.raises(SystemExit):
        run(tmp_path, file)
    err = capsys.readouterr().err
    assert err.startswith("error: benchmark: ") and "bench.jsonl line 2: guide image" in err
    assert not (tmp_path / "outputs" / "evaluate" / "run" / "metrics.json").exists()
