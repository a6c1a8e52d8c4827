"""evaluate.py with scorers: a folder of clips of mixed sizes and lengths gets every weight-free dimension (and the
ground truth where a sidecar has it), unreadable files are recorded, and bad scorer settings fail before reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from test_evaluate_folder import bad_files, run_in_process

from anisora.config.errors import ConfigError
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.inference.video_io import write_mp4
from anisora.tasks import evaluate


def mixed_folder(folder):
    bad_files(folder)
    clip = make_clip(WorldConfig(), 0, "benchmark", 0, motion_score=3.0, direction="right")
    write_mp4(folder / "sprite.mp4", clip.video, scale=2)
    (folder / "sprite.json").write_text(json.dumps({"truth": clip.truth.to_json(), "scale": 2,
                                                    "caption": clip.caption}))
    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(40, 200, (1, 48, 64, 3), dtype=np.uint8), 5, axis=0)
    write_mp4(folder / "still.mp4", still)
    write_mp4(folder / "noise.mp4", rng.integers(0, 256, (9, 24, 40, 3), dtype=np.uint8))
    return folder


def test_a_folder_of_mixed_clips_gets_every_weight_free_dimension(tmp_path):
    metrics = run_in_process(mixed_folder(tmp_path / "videos"), tmp_path / "outputs")
    run_dir = tmp_path / "outputs" / "evaluate" / "run"
    assert metrics["num_clips"] == 3 and metrics["num_failed"] == 2
    rows = {r["name"]: r for r in map(json.loads, (run_dir / "per_clip.jsonl").read_text().splitlines())
            if "error" not in r}
    sprite, still, noise = rows["sprite"]["dimensions"], rows["still"]["dimensions"], rows["noise"]["dimensions"]
    assert sprite["direction_correct"] == 1.0 and sprite["speed_score"] > 0.8 and sprite["dynamic_degree"] == 1.0
    assert still["static"] == 1.0 and still["dynamic_degree"] == 0.0 and still["direction_correct"] is None
    assert noise["static"] == 0.0 and noise["motion_smoothness_blend"] < still["motion_smoothness_blend"]
    assert metrics["dynamic_degree"] == pytest.approx((1.0 + 0.0 + noise["dynamic_degree"]) / 3)
    assert metrics["static"] == pytest.approx(1 / 3)
    assert metrics["vbench_quality_dims"] == 3  # temporal flickering, dynamic degree, the smoothness proxy
    report = (run_dir / "report.md").read_text()
    assert "## Dimensions per clip" in report and "| motion_smoothness_blend |" in report
    assert (run_dir / "dimensions.png").stat().st_size > 1000


def test_bad_scorer_settings_fail_before_any_video_is_read(tmp_path):
    from conftest import task_config

    for override, key in (("metrics=[nope]", "metrics"), ("reward=weighted", "reward.weights.nope")):
        extra = ["+reward.weights.nope=1.0"] if override == "reward=weighted" else []
        cfg = task_config("evaluate", [f"videos={tmp_path}", "logger=none", override, *extra])
        with pytest.raises(ConfigError) as err:
            evaluate.build_scorers(cfg)
        assert err.value.key == key


def test_reward_option_adds_its_dimensions(tmp_path):
    cfg = {"metrics": [], "reward": {"name": "weighted", "scorers": ["ground_truth"],
                                     "weights": {"direction_correct": 1.0}}}
    (scorer,) = evaluate.build_scorers(OmegaConf.create(cfg))
    assert scorer.dimensions[0] == "reward"


def test_named_metric_sets_expand_to_their_scorers_once():
    from anisora.rewards import scorer_names

    assert scorer_names(["ground_truth", "vbench_i2v", "weight_free"]) == ["ground_truth", "weight_free", "vbench"]
    assert scorer_names(["anime_reward"]) == ["learned"]
    weight_free, vbench = evaluate.build_scorers(OmegaConf.create({"metrics": ["vbench_i2v"], "reward": None}))
    assert "dynamic_degree" in weight_free.dimensions and vbench.dimensions == ()  # no model weights configured
