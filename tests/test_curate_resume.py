"""Curation killed part-way resumes without redoing finished sources and ends with the same manifest."""

from __future__ import annotations

import sys

import pytest
from conftest import kill_when
from curate_helpers import curate_cli

from anisora.data.curation.corpus import make_corpus


def parts(out):
    """Finished parts (a killed write leaves a hidden temporary file, which is not one)."""
    return [p for p in (out / "parts").glob("*.json") if not p.name.startswith(".")]


@pytest.mark.slow
def test_killed_curation_resumes_to_the_same_manifest(tmp_path):
    folder = tmp_path / "in"
    make_corpus(folder, videos=10, shots_per_video=6, seed=3)
    common = [f"input={folder}", "workers=1", "progress=false"]
    whole = curate_cli(*common, f"out={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    expected = (tmp_path / "whole" / "manifest.jsonl").read_bytes()

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "anisora.tasks.data_cli", "curate", *common, f"out={out}"]
    kill_when(args, lambda: bool(parts(out)), timeout=120)
    finished = {p: p.stat().st_mtime_ns for p in parts(out)}
    assert 1 <= len(finished) < 10 and not (out / "manifest.jsonl").exists()

    again = curate_cli(*common, f"out={out}")
    assert again.returncode == 0, again.stderr
    assert f"{len(finished)} done earlier, {10 - len(finished)} to analyse" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not redone
    assert len(parts(out)) == 10 and not list((out / "parts").glob(".*"))  # no temporary files left
    assert (out / "manifest.jsonl").read_bytes() == expected

    # A threshold change reuses every part and only rewrites the verdicts.
    stricter = curate_cli(*common, f"out={out}", "motion.min=100")
    assert "10 done earlier, 0 to analyse" in stricter.stdout + stricter.stderr
    assert b"motion<100" in (out / "manifest.jsonl").read_bytes()
