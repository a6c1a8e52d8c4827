"""Captions (sidecars, the score suffix mapping) and the model hooks' up-front checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from curate_helpers import curate_config

from anisora.config.errors import ConfigError
from anisora.data.captions import caption_with_scores, motion_score_from_flow, scores_of, sidecar_caption
from anisora.data.curation.corpus import make_corpus
from anisora.data.manifest import read_manifest
from anisora.tasks.curate import curate, validate

TABLE_PX, TABLE_SCORES = [0.0, 1.0, 3.0, 6.0, 12.0, 24.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def constant_flow(weights: str):
    """A stand-in flow model for the hook: every pixel moves 2 px to the right."""
    assert Path(weights).is_file()
    return lambda a, b: np.stack([np.full(a.shape[:2], 2.0), np.zeros(a.shape[:2])], axis=-1)


def test_sidecar_caption(tmp_path):
    video = tmp_path / "ep01.mp4"
    assert sidecar_caption(video) is None
    (tmp_path / "ep01.json").write_text(json.dumps({"caption": " a cat\n runs. "}))
    assert sidecar_caption(video) == "a cat runs."
    (tmp_path / "ep01.txt").write_text("a dog\nsleeps.")
    assert sidecar_caption(video) == "a dog sleeps."  # .txt wins
    (tmp_path / "ep02.json").write_text(json.dumps({"text": "no caption key"}))
    assert sidecar_caption(tmp_path / "ep02.mkv") is None


@pytest.mark.parametrize(("px", "score"), [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0), (2.0, 1.5), (4.5, 2.5),
                                            (9.0, 3.5), (24.0, 5.0), (100.0, 5.0), (-1.0, 0.0)])
def test_motion_score_mapping(px, score):
    assert motion_score_from_flow(px, TABLE_PX, TABLE_SCORES) == pytest.approx(score)


def test_captions_in_the_manifest_carry_measured_scores(tmp_path):
    folder = tmp_path / "in"
    make_corpus(folder, videos=1, shots_per_video=3, seed=5)
    (folder / "video_000.txt").write_text("a slime hops across the meadow")
    cfg = curate_config(f"input={folder}", f"out={tmp_path / 'out'}", "workers=1", "progress=false")
    sources = validate(cfg)
    records = curate(cfg, sources, tmp_path / "out")
    assert records == list(read_manifest(tmp_path / "out" / "manifest.jsonl"))
    for r in records:
        expected_motion = motion_score_from_flow(r.scores["motion"], TABLE_PX, TABLE_SCORES)
        assert r.scores["motion_score"] == expected_motion
        assert r.caption == caption_with_scores("a slime hops across the meadow", motion=expected_motion, aesthetic=5.5)
        assert scores_of(r.caption) == (5.5, expected_motion)
        assert r.caption.endswith(f"aesthetic score: 5.5. motion score: {expected_motion:.1f}.")


def test_raft_hook_replaces_the_opencv_flow(tmp_path):
    folder = tmp_path / "in"
    make_corpus(folder, videos=1, shots_per_video=2, seed=6)
    weights = tmp_path / "raft.pth"
    weights.write_bytes(b"weights")
    cfg = curate_config(f"input={folder}", f"out={tmp_path / 'out'}", "workers=1", "progress=false",
                        f"motion.raft_weights={weights}", "motion.raft_module=test_curate_captions:constant_flow")
    records = curate(cfg, validate(cfg), tmp_path / "out")
    assert [r.scores["motion"] for r in records] == [pytest.approx(2.0 * 480 / 120)] * len(records)


@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["caption.model=/no/such/model"], "caption.model", "is not a folder"),
    (["caption.model={tmp}"], "caption.model", "has no config.json"),
    (["motion.raft_weights=/no/such/raft.pth"], "motion.raft_weights", "does not exist"),
    (["motion.raft_weights={tmp}"], "motion.raft_module", "required with motion.raft_weights"),
    (["motion.raft_weights={tmp}", "motion.raft_module=no_such_package:build"], "motion.raft_module", "cannot import"),
    (["motion.raft_module=os:getcwd"], "motion.raft_module", "set motion.raft_weights too"),
    (["text.weights=/no/such/craft.pth", "text.module=os:getcwd"], "text.weights", "does not exist"),
    (["aesthetic.weights={tmp}"], "aesthetic.module", "required with aesthetic.weights"),
    (["duration.min_s=30"], "duration.min_s", "must be <= duration.max_s"),
    (["caption.motion_px=[0,1]"], "caption.motion_px", "as many as caption.motion_scores"),
    (["input=/no/such/folder"], "input", "does not exist"),
])
def test_bad_values_fail_before_any_work(tmp_path, overrides, key, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"x")
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    cfg = curate_config(f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}", *overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == key and message in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
