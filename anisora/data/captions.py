"""AniSora's caption suffix: motion and aesthetic strength are text ("aesthetic score: A. motion score: M.")."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SUFFIX = re.compile(r"\s*aesthetic score:\s*([0-9.]+)\.\s*motion score:\s*([0-9.]+)\.?\s*$", re.IGNORECASE)


def scores_of(caption: str) -> tuple[float, float] | None:
    """(aesthetic, motion) read from a caption's suffix, or None when it has none."""
    m = SUFFIX.search(caption)
    return (float(m.group(1).rstrip(".")), float(m.group(2).rstrip("."))) if m else None


def caption_with_scores(caption: str, motion: float | None = None, aesthetic: float | None = None) -> str:
    """Set the suffix: replaces the caption's own scores where given, appends the suffix if it has none.
    With neither score given the caption is returned unchanged."""
    if motion is None and aesthetic is None:
        return caption
    current = scores_of(caption)
    body = SUFFIX.sub("", caption).rstrip()
    a = aesthetic if aesthetic is not None else (current[0] if current else 5.5)
    m = motion if motion is not None else (current[1] if current else 2.0)
    body = body if body.endswith(".") or not body else body + "."
    return f"{body} aesthetic score: {a:.1f}. motion score: {m:.1f}.".lstrip()


def motion_score_from_flow(flow_px: float, table_px: Sequence[float], table_scores: Sequence[float]) -> float:
    """AniSora's motion score from measured motion: piecewise-linear in the optical-flow magnitude
    (px/frame at the reference height; see `anisora.data.curation.scores.motion`) through the points
    (table_px[i], table_scores[i]), clamped to the first and last score, rounded to 0.1.

    The default table (conf/curate.yaml caption.motion_px / motion_scores) maps 0, 1, 3, 6, 12, 24 px/frame
    to 0, 1, 2, 3, 4, 5: each score step roughly doubles the on-screen speed."""
    return round(float(np.interp(flow_px, list(table_px), list(table_scores))), 1)


def sidecar_caption(video: Path | str) -> str | None:
    """The caption beside a video: <stem>.txt (its text), else <stem>.json (its "caption" string); None when
    neither exists or says nothing. Whitespace is folded to single spaces, so a caption is one line."""
    video = Path(video)
    txt, js = video.with_suffix(".txt"), video.with_suffix(".json")
    text: object = None
    if txt.is_file():
        text = txt.read_text(errors="replace")
    elif js.is_file():
        try:
            data = json.loads(js.read_text(errors="replace"))
        except ValueError:
            return None
        text = data.get("caption") if isinstance(data, dict) else None
    if not isinstance(text, str):
        return None
    return " ".join(text.split()) or None
