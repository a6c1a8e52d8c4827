"""Every figure in the READMEs' tables is found in the results file their marker names
(benchmarks/check_figures.py), and the check itself catches a figure that is not."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import check_figures  # noqa: E402


def test_every_table_figure_is_in_its_results_file():
    assert check_figures.check() == []


def test_a_figure_without_a_results_file_is_caught(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- figures: results/tiny_cpu.json -->\n\n| metric | value |\n|---|---|\n"
                      "| direction_accuracy (`32` clips) | 0.938 |\n| speed_error | 0.37 |\n| made up | 0.72 |\n\n"
                      "| unmarked | 1 |\n|---|---|\n| x | 2 |\n")
    monkeypatch.setattr(check_figures, "ROOT", tmp_path)
    problems = check_figures.check((readme,))
    assert len(problems) == 2, problems
    assert problems[0].startswith("README.md:7: 0.72 ") and "marker" in problems[1]
