"""Resume state: one part file per source under out/parts/, named by a hash of the source's path, size,
modification time and the measurement settings. A part is written atomically when its source is done,
so a killed run leaves only whole parts, and a re-run redoes exactly the sources without one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from anisora.io import atomic_write_bytes

PART_VERSION = 1


def part_key(source: Path, settings: dict[str, Any]) -> str:
    try:
        stat = source.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    blob = json.dumps({"source": str(source), "size": size, "mtime_ns": mtime, "settings": settings,
                       "version": PART_VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def part_path(out: Path, source: Path, settings: dict[str, Any]) -> Path:
    return out / "parts" / f"{source.stem[:40]}-{part_key(source, settings)}.json"


def remove_stale_temporaries(out: Path) -> None:
    """Half-written parts of a killed run (hidden temporary siblings) are never read; clear them."""
    for path in (out / "parts").glob(".*.tmp-*"):
        path.unlink(missing_ok=True)


def read_part(path: Path) -> dict[str, Any] | None:
    """The part's content, or None when it is missing or unreadable (then the source is redone)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and ("clips" in data or "error" in data) else None


def write_part(path: Path, source: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps({"source": str(source), **data}, sort_keys=True) + "\n").encode())
