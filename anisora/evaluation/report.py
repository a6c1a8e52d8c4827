"""Evaluation outputs: metrics.json (flat keys), per_clip.jsonl, report.md and a PNG chart.

per_clip.jsonl holds one line per scored clip, then one per file that could not be scored
(`name`, `file`, `error`), so a folder with a few bad files still yields a report of the rest.

JSON files are strict JSON (readable by jq or a browser): NaN ("does not apply") is written as null,
and an infinite PSNR (identical frames) as PSNR_CAP.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from anisora.evaluation.metrics import PSNR_CAP, ClipFailure, ClipScore, dimension_means, label_means
from anisora.io import atomic_write_bytes

DIRECTIONS = ("left", "right", "up", "down")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else math.copysign(PSNR_CAP, value)
    return value


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"  # inf prints as "inf"
    return str(value)


def _cell(text: str) -> str:
    """A clip name as a markdown table cell: a '|' in it would split the row."""
    return text.replace("|", "\\|")


def chart_png(scores: list[ClipScore]) -> bytes:
    """Two panels: true vs measured speed (coloured by direction correct or not), and direction
    accuracy per true direction. Drawn on a bare Figure (Agg canvas): no pyplot state or GUI backend.
    """
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    groups = (
        ("tab:green", "direction correct", [s for s in scores if s.direction_true is not None
                                            and s.direction_pred == s.direction_true]),
        ("tab:red", "direction wrong", [s for s in scores if s.direction_true is not None
                                        and s.direction_pred != s.direction_true]),
        ("tab:gray", "no true direction", [s for s in scores if s.direction_true is None]),
    )
    for colour, label, group in groups:
        if group:
            ax1.scatter([s.speed_true for s in group], [s.speed_pred for s in group], c=colour, label=label,
                        s=18)
    finite = [v for s in scores for v in (s.speed_true, s.speed_pred) if math.isfinite(v)]
    top = max(finite, default=1.0) * 1.1 or 1.0
    ax1.plot([0, top], [0, top], "k--", lw=0.8)
    ax1.set(xlim=(0, top), ylim=(0, top), xlabel="true speed (px/frame)", ylabel="measured speed (px/frame)",
            title="speed")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    accuracy, counts = [], []
    for d in DIRECTIONS:
        group = [s for s in scores if s.direction_true == d]
        accuracy.append(float(np.mean([s.direction_pred == d for s in group])) if group else 0.0)
        counts.append(len(group))
    bars = ax2.bar(DIRECTIONS, accuracy, color="tab:blue")
    ax2.bar_label(bars, labels=[f"n={n}" for n in counts], fontsize=7)
    ax2.set(ylim=(0, 1.1), ylabel="accuracy", title="direction accuracy by true direction")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def dimensions_png(scores: list[ClipScore]) -> bytes:
    """A bar per scorer dimension (its mean over the clips): those within [0, 1] on one axis, the others (PSNR in
    dB, flow in pixels, errors) on a second, so no scale hides another."""
    means = {k: v for k, v in dimension_means(scores).items() if math.isfinite(v)}
    unit = {k: v for k, v in means.items() if 0.0 <= v <= 1.0}
    other = {k: v for k, v in means.items() if k not in unit}
    panels = [(t, g) for t, g in (("scores in [0, 1]", unit), ("other scales", other)) if g]
    fig = Figure(figsize=(9, 0.6 + 0.32 * max([len(g) for _, g in panels] or [1])))
    for ax, (title, group) in zip(fig.subplots(1, max(len(panels), 1), squeeze=False)[0], panels):
        bars = ax.barh(list(group), list(group.values()), color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in group.values()], fontsize=7)
        ax.invert_yaxis()
        ax.tick_params(labelsize=7)
        ax.set(title=title, xlim=(0, 1.15) if group is unit else None)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def dimension_lines(scores: list[ClipScore]) -> list[str]:
    """The report's per-clip table of scorer dimensions (nothing when no scorer ran)."""
    names = list(dict.fromkeys(k for s in scores for k in s.dimensions))
    if not names:
        return []
    lines = ["", "## Dimensions per clip", "", "![dimensions](dimensions.png)", "",
             "| clip | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    return lines + [f"| {_cell(s.name)} | " + " | ".join(_fmt(s.dimensions.get(k)) for k in names) + " |"
                    for s in scores]


def label_lines(scores: list[ClipScore]) -> list[str]:
    """The report's per-label table: clips and the mean of every dimension per action label (nothing unlabelled)."""
    by_label = label_means(scores)
    if not by_label:
        return []
    names = list(dict.fromkeys(k for means in by_label.values() for k in means if k != "num_clips"))
    lines = ["", "## Per label", "", "| label | clips | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    return lines + [f"| {_cell(label)} | {int(means['num_clips'])} | " + " | ".join(_fmt(means.get(k)) for k in names)
                    + " |" for label, means in by_label.items()]


#: the two result tables of Index-AniSora's benchmark: (column, the metric keys that fill it, first found wins;
#: a later key is a stand-in)
LAYOUTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "AniSora benchmark (reward-model dimensions)": (
        ("Visual Smooth", ("visual_smooth",)), ("Visual Motion", ("visual_motion",)),
        ("Visual Appeal", ("visual_appeal",)), ("Text-Video Consistency", ("text_video_consistency",)),
        ("Image-Video Consistency", ("image_video_consistency",)),
        ("Character Consistency", ("character_consistency",))),
    "VBench I2V dimensions": (
        ("Motion Smoothness", ("motion_smoothness", "motion_smoothness_blend")),
        ("Motion Score", ("dynamic_degree",)), ("Aesthetic Quality", ("aesthetic_quality",)),
        ("Imaging Quality", ("imaging_quality", "imaging_quality_clipiqa")), ("I2V Subject", ("i2v_subject",)),
        ("I2V Background", ("i2v_background",)), ("Overall Consistency", ("text_video_consistency",)),
        ("Subject Consistency", ("subject_consistency",))),
}


def layout_lines(metrics: dict[str, float]) -> list[str]:
    """The seed benchmark's column layouts, one row each, for every layout the metrics fill at least in part; each
    column names the metric key that filled it (a stand-in shows as such), an unfilled one says n/a."""
    lines: list[str] = []
    for title, columns in LAYOUTS.items():
        found = [next((k for k in keys if metrics.get(k) is not None), None) for _, keys in columns]
        if not any(found):
            continue
        header = [f"{name} (`{key}`)" if key else name for (name, _), key in zip(columns, found, strict=True)]
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(columns),
                  "| " + " | ".join(_fmt(metrics[k]) if k else "n/a" for k in found) + " |"]
    return lines


def failure_lines(scored: int, failures: Sequence[ClipFailure]) -> list[str]:
    """The report's note of files that could not be scored, one row each (nothing when all were)."""
    if not failures:
        return []
    lines = [f"Scored {scored} of {scored + len(failures)} files; {len(failures)} could not be read:", "",
             "| file | error |", "|---|---|"]
    return lines + [f"| {_cell(f.file)} | {_cell(f.error)} |" for f in failures] + [""]


def markdown(title: str, metrics: dict[str, float], scores: list[ClipScore],
             failures: Sequence[ClipFailure] = ()) -> str:
    """report.md: the unreadable files (if any), the metrics table, the chart, one row per clip, then the AniSora and
    VBench column layouts, the per-label and the per-clip dimension tables."""
    lines = [f"# {title}", "", *failure_lines(len(scores), failures), "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(int(v) if k.startswith('num_') else v)} |" for k, v in sorted(metrics.items())]
    lines += ["", "![metrics](metrics.png)", "",
              "| clip | direction (true / measured) | speed px/frame (true / measured) "
              "| first-frame PSNR dB | flicker |",
              "|---|---|---|---|---|"]
    lines += [f"| {_cell(s.name)} | {_fmt(s.direction_true)} / {_fmt(s.direction_pred)} "
              f"| {_fmt(s.speed_true)} / {_fmt(s.speed_pred)} | {_fmt(s.first_frame_psnr)} "
              f"| {_fmt(s.temporal_flickering)} |" for s in scores]
    return "\n".join(lines + layout_lines(metrics) + label_lines(scores) + dimension_lines(scores)) + "\n"


def write_report(folder: str | Path, metrics: dict[str, float], scores: list[ClipScore],
                 title: str = "Evaluation", failures: Sequence[ClipFailure] = ()) -> dict[str, Path]:
    """Write metrics.json, per_clip.jsonl, metrics.png, dimensions.png (when clips carry scorer dimensions),
    per_label.json (when clips carry action labels) and report.md (each atomically) into `folder`."""
    folder = Path(folder)
    metrics_json = json.dumps({k: _json_safe(v) for k, v in metrics.items()}, indent=2, sort_keys=True,
                              allow_nan=False)
    per_clip = "".join(json.dumps({k: _json_safe(v) for k, v in s.to_json().items()}, allow_nan=False) + "\n"
                       for s in [*scores, *failures])
    charts = {"dimensions_png": atomic_write_bytes(folder / "dimensions.png", dimensions_png(scores))} \
        if any(s.dimensions for s in scores) else {}
    by_label = label_means(scores)
    if by_label:
        text = json.dumps({k: {d: _json_safe(v) for d, v in m.items()} for k, m in by_label.items()}, indent=2,
                          allow_nan=False)
        charts["per_label_json"] = atomic_write_bytes(folder / "per_label.json", (text + "\n").encode())
    return charts | {
        "metrics_json": atomic_write_bytes(folder / "metrics.json", (metrics_json + "\n").encode()),
        "per_clip_jsonl": atomic_write_bytes(folder / "per_clip.jsonl", per_clip.encode()),
        "chart_png": atomic_write_bytes(folder / "metrics.png", chart_png(scores)),
        "report_md": atomic_write_bytes(folder / "report.md", markdown(title, metrics, scores, failures).encode()),
    }
