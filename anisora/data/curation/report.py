"""What curation did, for people: report.md (kept and rejected counts per reason, a summary of every
score) and one histogram PNG per score with its threshold drawn."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402

from anisora.data.curation.filters import Limit  # noqa: E402
from anisora.data.manifest import ClipRecord  # noqa: E402
from anisora.io import atomic_write_bytes  # noqa: E402


def reason_kind(reason: str) -> str:
    """"motion<0.5" -> "motion", "duplicate_of:ID" -> "duplicate"."""
    return "duplicate" if reason.startswith("duplicate_of:") else re.split(r"[<>:]", reason, maxsplit=1)[0]


def thresholds(limits: list[Limit], extra: dict[str, float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [v] for k, v in extra.items()}
    for limit in limits:
        out.setdefault(limit.score, []).extend(v for v in (limit.lo, limit.hi) if v is not None)
    return out


def score_names(records: list[ClipRecord]) -> list[str]:
    return sorted({name for r in records for name in r.scores})


def histogram_png(name: str, values: np.ndarray, lines: list[float]) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(values, bins=min(40, max(5, len(values) // 2)), color="#4c72b0")
    for line in lines:
        ax.axvline(line, color="#c44e52", linestyle="--", linewidth=1.5, label=f"threshold {line:g}")
    if lines:
        ax.legend(fontsize=8)
    ax.set_xlabel(name)
    ax.set_ylabel("clips")
    ax.set_title(f"{name} ({len(values)} clips)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp: same run, same bytes
    plt.close(fig)
    return buffer.getvalue()


def write_histograms(folder: Path, records: list[ClipRecord], lines: dict[str, list[float]]) -> list[Path]:
    paths = []
    for name in score_names(records):
        values = np.array([r.scores[name] for r in records if name in r.scores], dtype=np.float64)
        path = folder / f"{name}.png"
        atomic_write_bytes(path, histogram_png(name, values, lines.get(name, [])))
        paths.append(path)
    return paths


def report_markdown(records: list[ClipRecord], sources: int, lines: dict[str, list[float]]) -> str:
    clips = [r for r in records if r.error is None]
    errors = [r for r in records if r.error is not None]
    kept = sum(r.keep for r in clips)
    per_reason = Counter(reason_kind(reason) for r in clips for reason in r.reasons)
    only = Counter(reason_kind(r.reasons[0]) for r in clips if len(r.reasons) == 1)
    out = ["# Curation report", "",
           f"- sources: {sources} ({len(errors)} unreadable)",
           f"- clips: {len(clips)}, kept {kept}, rejected {len(clips) - kept}",
           f"- kept duration: {sum(r.duration_s for r in clips if r.keep):.1f} s of "
           f"{sum(r.duration_s for r in clips):.1f} s",
           f"- captioned: {sum(r.caption is not None for r in clips)}", "",
           "## Rejections", "", "| reason | clips | only reason |", "|---|---:|---:|"]
    out += [f"| {kind} | {count} | {only.get(kind, 0)} |" for kind, count in sorted(per_reason.items())]
    out += ["", "## Scores", "", "| score | clips | min | p10 | median | p90 | max | threshold |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in score_names(clips):
        v = np.array([r.scores[name] for r in clips if name in r.scores], dtype=np.float64)
        p10, p50, p90 = np.percentile(v, [10, 50, 90])
        limit = ", ".join(f"{x:g}" for x in lines.get(name, [])) or "-"
        cells = " | ".join(f"{x:.4g}" for x in (v.min(), p10, p50, p90, v.max()))
        out.append(f"| {name} | {len(v)} | {cells} | {limit} |")
    if errors:
        out += ["", "## Unreadable sources", ""] + [f"- `{r.source}`: {r.error}" for r in errors]
    out += ["", "Histograms: `histograms/<score>.png` (dashed lines: thresholds).", ""]
    return "\n".join(out)
