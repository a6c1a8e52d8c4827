"""`evaluate.py compare=[RUN_A,RUN_B,...]`: earlier evaluations side by side, with each run's difference to the first.

A run is an evaluation folder (holding metrics.json) or a metrics.json itself. Writes compare.md (one row per
metric, one column per run, then B - A, ...), compare.json and compare.png (grouped bars of the metrics that lie in
[0, 1] in every run, the score-like dimensions).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from anisora.config.errors import ConfigError
from anisora.io import atomic_write_bytes


def read_run(spec: str) -> tuple[str, dict[str, float | None]]:
    """(name, metrics) of one evaluation; a missing or unreadable metrics.json fails in one line."""
    path = Path(spec).expanduser()
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError("compare", f"{spec}: expected an evaluation folder with metrics.json (or the file)")
    try:
        metrics = json.loads(file.read_text())
    except json.JSONDecodeError as ex:
        raise ConfigError("compare", f"{file} is not JSON ({ex.msg})") from None
    if not isinstance(metrics, dict):
        raise ConfigError("compare", f"{file}: expected an object of metrics")
    name = file.parent.name if file.name == "metrics.json" else file.stem
    numbers = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
               for k, v in metrics.items()}
    return name, numbers


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def comparison(runs: list[tuple[str, dict[str, float | None]]]) -> dict[str, Any]:
    """{runs: names, metrics: {metric: [value per run]}, differences: {metric: [run_i - run_0 for i >= 1]}}."""
    names = unique_names([n for n, _ in runs])
    keys = sorted({k for _, m in runs for k in m})
    values = {k: [m.get(k) for _, m in runs] for k in keys}
    diffs = {k: [None if v[0] is None or x is None else x - v[0] for x in v[1:]] for k, v in values.items()}
    return {"runs": names, "metrics": values, "differences": diffs}


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def compare_markdown(table: dict[str, Any], sources: list[str]) -> str:
    names = table["runs"]
    header = ["metric", *names, *[f"{n} - {names[0]}" for n in names[1:]]]
    lines = ["# Comparison", "", *[f"- **{n}**: `{s}`" for n, s in zip(names, sources, strict=True)], "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, values in table["metrics"].items():
        diffs = table["differences"][key]
        signed = [("+" if d is not None and d > 0 else "") + _fmt(d) for d in diffs]
        lines.append("| " + " | ".join([key, *map(_fmt, values), *signed]) + " |")
    return "\n".join(lines) + "\n"


def compare_png(table: dict[str, Any]) -> bytes:
    """Grouped bars of the metrics within [0, 1] in every run."""
    keys = [k for k, v in table["metrics"].items()
            if all(x is not None and math.isfinite(x) and 0.0 <= x <= 1.0 for x in v)]
    names = table["runs"]
    fig = Figure(figsize=(max(6.0, 0.5 * len(keys) * len(names) + 2), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ax.bar([j + i * width for j in range(len(keys))], [table["metrics"][k][i] for k in keys], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_comparison(folder: str | Path, sources: list[str]) -> dict[str, Path]:
    """Read every run (all checked before anything is written), then compare.md, compare.json, compare.png."""
    if len(sources) < 2:
        raise ConfigError("compare", f"expected two or more evaluations, got {len(sources)}")
    runs = [read_run(s) for s in sources]
    table = comparison(runs)
    folder = Path(folder)
    return {
        "compare_md": atomic_write_bytes(folder / "compare.md", compare_markdown(table, sources).encode()),
        "compare_json": atomic_write_bytes(folder / "compare.json", (json.dumps(table, indent=2) + "\n").encode()),
        "compare_png": atomic_write_bytes(folder / "compare.png", compare_png(table)),
    }
