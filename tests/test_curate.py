"""`anisora-data curate` on a synthetic corpus with known shots and planted defects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from curate_helpers import curate_cli, write_animation

from anisora.data.curation.corpus import evaluate, make_corpus
from anisora.data.manifest import read_manifest


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """The test corpus plus broken files, gif and webp, curated once through the CLI (2 workers)."""
    root = tmp_path_factory.mktemp("curate")
    folder = root / "in"
    truth = make_corpus(folder, videos=4, shots_per_video=8, seed=0)
    data = (folder / "video_000.mp4").read_bytes()
    (folder / "broken").mkdir()
    (folder / "broken" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "broken" / "empty.mp4").write_bytes(b"")
    (folder / "broken" / "notes.pdf").write_bytes(b"%PDF-1.4 not a video\n")
    (folder / "broken" / "text.mkv").write_text("this is not a matroska file\n")
    cuts = {name: write_animation(folder / name) for name in ("anim.gif", "anim.webp")}
    (folder / "video_001.txt").write_text("  a quiet evening\nin the park  \n")
    (folder / "anim.json").write_text(json.dumps({"caption": "two scenes."}))
    result = curate_cli(f"input={folder}", f"out={root / 'out'}", "workers=2")
    assert result.returncode == 0, result.stderr
    records = list(read_manifest(root / "out" / "manifest.jsonl"))
    return truth, records, root / "out", folder, cuts


def test_shot_boundaries_and_filters_match_the_ground_truth(curated):
    truth, records, *_ = curated
    result = evaluate(truth, records, tolerance=2)
    for name in ("shots", "text", "letterbox", "static", "duplicate"):
        least = 0.95 if name == "shots" else 0.9
        assert result[name]["actual"] >= 5, result[name]
        assert result[name]["precision"] >= least and result[name]["recall"] >= least, (name, result[name])
    kept = [r for r in records if r.keep]
    assert kept and all(not r.reasons for r in kept)


def test_duplicates_name_the_earlier_clip(curated):
    _, records, *_ = curated
    order = {r.id: i for i, r in enumerate(records)}
    duplicates = [(r, reason.split(":", 1)[1]) for r in records for reason in r.reasons
                  if reason.startswith("duplicate_of:")]
    assert duplicates
    for record, original in duplicates:
        assert order[original] < order[record.id]
        assert not any(reason.startswith("duplicate_of:") for reason in records[order[original]].reasons)


def test_unreadable_files_give_one_error_line_each(curated):
    truth, records, _, folder, _ = curated
    errors = {Path(r.source).name: r for r in records if r.error is not None}
    assert set(errors) == {"truncated.mp4", "empty.mp4", "notes.pdf", "text.mkv"}
    for record in errors.values():
        assert "\n" not in record.error and not record.keep and record.num_frames == 0
    assert "empty" in errors["empty.mp4"].error and "not a video" in errors["notes.pdf"].error
    per_source = {}
    for r in records:
        per_source.setdefault(Path(r.source).name, []).append(r)
    assert all(len(per_source[name]) == 1 for name in errors)
    for video in truth.videos:  # every clip of the readable videos is still there
        clips = per_source[Path(video.path).name]
        assert sum(c.num_frames for c in clips) == video.shots[-1].end


def test_gif_and_webp_are_read_with_their_shots(curated):
    _, records, _, _, cuts = curated
    for name, true_cuts in cuts.items():
        clips = sorted((r for r in records if Path(r.source).name == name), key=lambda r: r.start_frame)
        assert [r.error for r in clips] == [None] * len(clips), name
        assert [c.start_frame for c in clips[1:]] == true_cuts, name
        assert clips[0].fps == pytest.approx(10.0) and (clips[0].width, clips[0].height) == (128, 96)


def test_manifest_order_scores_and_outputs(curated):
    _, records, out, *_ = curated
    keys = [(r.source, r.start_frame) for r in records]
    assert keys == sorted(keys)
    names = {"motion", "text", "border", "change", "duration_s", "fps", "short_side", "motion_score"}
    for r in records:
        if r.error is None:
            assert names <= set(r.scores)
            assert "aesthetic" not in r.scores  # only with an aesthetic model
    report = (out / "report.md").read_text()
    assert "kept" in report and "| text |" in report and "duplicate" in report
    pngs = {p.stem for p in (out / "histograms").glob("*.png")}
    assert {"motion", "text", "border", "change", "duplicate_distance", "duration_s"} <= pngs
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (out / "histograms").glob("*.png"))


def test_bad_key_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    shutil.copy(Path(__file__), tmp_path / "in" / "x.mp4")
    for override, expected in (("motion.bogus=1", "error: motion.bogus: unknown config key; allowed in 'motion':"),
                               ("text.polarity=sideways", "error: text.polarity: expected one of bright, both, dark"),
                               ("workers=0", "error: workers: must be >= 1")):
        result = curate_cli(f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}", override)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), result.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", [4, 7])
def test_filters_hold_on_other_corpus_seeds(tmp_path, seed):
    """Seed 4 has the letterboxed shot whose border edge reads as 0.011 text coverage, the closest call of the
    text threshold over seeds 0-9 (benchmarks/results/curate_seeds.json); seed 7 is another draw."""
    truth = make_corpus(tmp_path / "in", videos=4, shots_per_video=8, seed=seed)
    result = curate_cli(f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}", "workers=2", "progress=false")
    assert result.returncode == 0, result.stderr
    accuracy = evaluate(truth, list(read_manifest(tmp_path / "out" / "manifest.jsonl")), tolerance=2)
    for name in ("shots", "text", "letterbox", "static", "duplicate"):
        assert accuracy[name]["precision"] == 1.0 and accuracy[name]["recall"] == 1.0, (name, accuracy[name])
