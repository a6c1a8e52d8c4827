"""evaluate.py compare=[A,B]: two evaluations side by side with their differences; bad runs refused in one line."""

from __future__ import annotations

import json

import pytest
from conftest import task_config

from anisora.config.errors import ConfigError
from anisora.evaluation.compare import comparison, read_run
from anisora.tasks import evaluate


def run_folder(path, metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_compare_writes_both_runs_and_the_differences(tmp_path):
    a = run_folder(tmp_path / "a", {"dynamic_degree": 0.5, "speed_error": 2.0, "only_a": 1.0, "note": "text"})
    b = run_folder(tmp_path / "b", {"dynamic_degree": 0.75, "speed_error": 1.5})
    out = tmp_path / "outputs" / "evaluate" / "run"
    metrics = evaluate.run(task_config("evaluate", [f"compare=[{a},{b}]", "logger=none", f"paths.log_dir={tmp_path}",
                                                    f"paths.output_dir={out}"]))
    assert metrics == {"num_runs": 2.0}
    table = json.loads((out / "compare.json").read_text())
    assert table["runs"] == ["a", "b"]
    assert table["metrics"]["dynamic_degree"] == [0.5, 0.75] and table["differences"]["dynamic_degree"] == [0.25]
    assert table["differences"]["speed_error"] == [-0.5] and table["metrics"]["only_a"] == [1.0, None]
    report = (out / "compare.md").read_text()
    assert "| dynamic_degree | 0.5000 | 0.7500 | +0.2500 |" in report and "| only_a | 1.0000 | - | - |" in report
    assert (out / "compare.png").stat().st_size > 1000


def test_compare_refuses_a_run_without_metrics_before_writing(tmp_path, capsys):
    a = run_folder(tmp_path / "a", {"x": 1.0})
    out = tmp_path / "outputs" / "evaluate" / "run"
    with pytest.raises(SystemExit):
        evaluate.run(task_config("evaluate", [f"compare=[{a},{tmp_path / 'missing'}]", "logger=none",
                                              f"paths.log_dir={tmp_path}", f"paths.output_dir={out}"]))
    assert capsys.readouterr().err.startswith("error: compare: ")
    assert not (out / "compare.md").exists()
    with pytest.raises(ConfigError, match="compare: expected two or more"):
        from anisora.evaluation.compare import write_comparison

        write_comparison(tmp_path / "o", [str(a)])
    assert read_run(str(a / "metrics.json")) == ("a", {"x": 1.0})
    assert comparison([("r", {"x": 1.0}), ("r", {"x": 3.0})])["runs"] == ["r", "r (2)"]
