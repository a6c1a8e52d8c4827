"""Verdicts: thresholds from config turn scores into keep/reasons, and duplicates are found over all
clips at once, in manifest order, so the first clip of a repeated shot is the one kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anisora.data.manifest import ClipRecord


@dataclass(frozen=True)
class Limit:
    """One threshold: `score` must be >= lo and <= hi (None: unbounded); `name` is the reason's label."""

    score: str
    lo: float | None = None
    hi: float | None = None

    def reason(self, value: float) -> str | None:
        if self.lo is not None and value < self.lo:
            return f"{self.score}<{self.lo:g}"
        if self.hi is not None and value > self.hi:
            return f"{self.score}>{self.hi:g}"
        return None


def limits_of(cfg) -> list[Limit]:
    """The thresholds of a curate config, in the order reasons are listed."""
    out = [Limit("duration_s", cfg.duration.min_s, cfg.duration.max_s),
           Limit("short_side", cfg.resolution.min_short_side or None),
           Limit("fps", cfg.resolution.min_fps or None),
           Limit("motion", cfg.motion.min, cfg.motion.max),
           Limit("change", cfg.static.min),
           Limit("border", None, cfg.border.max),
           Limit("text", None, cfg.text.max),
           Limit("aesthetic", cfg.aesthetic.min)]
    return [limit for limit in out if limit.lo is not None or limit.hi is not None]


def apply_limits(record: ClipRecord, limits: list[Limit]) -> None:
    for limit in limits:
        value = record.scores.get(limit.score)
        reason = None if value is None else limit.reason(value)
        if reason:
            record.reasons.append(reason)


def _bits(hashes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def mark_duplicates(records: list[ClipRecord], hashes: list[list[str] | None], colours: list[list[float] | None],
                    max_distance: float, max_colour: float) -> None:
    """Each clip is compared with every earlier clip that is not itself a duplicate: the mean Hamming
    distance of their frame hashes (score `duplicate_distance`, to the nearest earlier clip) and their
    mean colours. A match rejects it with reason "duplicate_of:<id of the earlier clip>"."""
    originals: list[int] = []
    width = max((len(h) for h in hashes if h is not None), default=0)
    table = np.zeros((len(records), width), dtype=np.uint64)
    palette = np.zeros((len(records), 3), dtype=np.float64)
    for i, (record, h) in enumerate(zip(records, hashes)):
        if h is None or len(h) != width:
            continue
        mine, colour = _bits(h), np.array(colours[i], dtype=np.float64)
        n = len(originals)
        if n:
            distance = _popcount(table[:n] ^ mine[None, :]).mean(axis=1)
            colour_gap = np.abs(palette[:n] - colour[None, :]).max(axis=1)
            record.scores["duplicate_distance"] = round(float(distance.min()), 3)
            match = np.nonzero((distance <= max_distance) & (colour_gap <= max_colour))[0]
            if len(match):
                record.reasons.append(f"duplicate_of:{records[originals[int(match[0])]].id}")
                continue
        table[n], palette[n] = mine, colour
        originals.append(i)
