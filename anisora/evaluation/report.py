"""Evaluation outputs: metrics.json (flat keys), per_clip.jsonl, report.md and a PNG chart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from anisora.evaluation.metrics import ClipScore
from anisora.inference.video_io import atomic_write_bytes

DIRECTIONS = ("left", "right", "up", "down")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def chart(scores: list[ClipScore], path: Path) -> Path:
    """Speed scatter (true vs predicted) and direction accuracy per true direction."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ok = [s for s in scores if s.direction_pred == s.direction_true]
    bad = [s for s in scores if s.direction_pred != s.direction_true]
    for group, colour, label in ((ok, "tab:green", "direction right"), (bad, "tab:red", "direction wrong")):
        ax1.scatter([s.speed_true for s in group], [s.speed_pred for s in group], c=colour, label=label, s=18)
    finite = [v for s in scores for v in (s.speed_true, s.speed_pred) if not math.isnan(v)]
    top = max(finite, default=1.0) * 1.1
    ax1.plot([0, top], [0, top], "k--", lw=0.8)
    ax1.set(xlabel="true speed (px/frame)", ylabel="measured speed (px/frame)", title="speed")
    ax1.legend(fontsize=7)
    acc = []
    for d in DIRECTIONS:
        group = [s for s in scores if s.direction_true == d]
        acc.append(np.mean([s.direction_pred == d for s in group]) if group else 0.0)
    ax2.bar(DIRECTIONS, acc, color="tab:blue")
    ax2.set(ylim=(0, 1), ylabel="accuracy", title="direction accuracy by true direction")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_report(folder: str | Path, metrics: dict[str, float], scores: list[ClipScore],
                 title: str = "Evaluation") -> dict[str, Path]:
    folder = Path(folder)
    paths = {
        "metrics_json": atomic_write_bytes(folder / "metrics.json",
                                           (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode()),
        "per_clip_jsonl": atomic_write_bytes(folder / "per_clip.jsonl",
                                             "".join(json.dumps(s.to_json()) + "\n" for s in scores).encode()),
        "chart_png": chart(scores, folder / "metrics.png"),
    }
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    lines += ["", "![metrics](metrics.png)", "", "| clip | direction (true / measured) | speed (true / measured) |"
              " first-frame PSNR | flicker |", "|---|---|---|---|---|"]
    lines += [f"| {s.name} | {s.direction_true} / {s.direction_pred} | {_fmt(s.speed_true)} / {_fmt(s.speed_pred)} |"
              f" {_fmt(s.first_frame_psnr)} | {_fmt(s.temporal_flickering)} |" for s in scores]
    paths["report_md"] = atomic_write_bytes(folder / "report.md", ("\n".join(lines) + "\n").encode())
    return paths
