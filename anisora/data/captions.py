"""AniSora's caption suffix: motion and aesthetic strength are text ("aesthetic score: A. motion score: M.")."""

from __future__ import annotations

import re

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
