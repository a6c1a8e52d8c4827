"""Benchmark files for evaluate.py (`benchmark=PATH`), organised as AniSora's 948-clip benchmark: one JSON object
per line with `prompt`, `label` (the action label; the report breaks every dimension down by it), `video` (the
clip to score; paths relative to the file), optional `frames` (guide images with their frame indices:
[{image: a.png, at: 0}, ...], negative indices from the end) and `mask` (a region image: white = given).
Every row is checked (keys, files, indices) in one line before any video is read; a video that cannot be read
is recorded, not fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anisora.config.errors import ConfigError
from anisora.guidance.spec import binary_mask
from anisora.inference.video_io import read_image, read_video
from anisora.rewards.base import Clip

KEY = "benchmark"


@dataclass
class BenchmarkRow:
    name: str
    prompt: str
    label: str | None
    video: Path
    frames: list[tuple[Path, int]] = field(default_factory=list)  # guide image, frame index (negative: from the end)
    mask: Path | None = None


def read_benchmark(path: str | Path) -> list[BenchmarkRow]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(KEY, f"benchmark file {path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            rows.append(row_of(line, path, n))
    if not rows:
        raise ConfigError(KEY, f"{path} holds no rows")
    return rows


def _file(folder: Path, value: Any, where: str, what: str) -> Path:
    file = (folder / str(value)).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(KEY, f"{where}: {what} {file} does not exist")
    return file


def row_of(line: str, path: Path, n: int) -> BenchmarkRow:
    where = f"{path} line {n}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as ex:
        raise ConfigError(KEY, f"{where}: not JSON ({ex.msg})") from None
    if not isinstance(row, dict) or not row.get("video"):
        raise ConfigError(KEY, f"{where}: expected an object with video, prompt, label (and frames, mask)")
    frames = []
    for entry in row.get("frames") or []:
        if not isinstance(entry, dict) or "image" not in entry or not isinstance(entry.get("at", 0), int):
            raise ConfigError(KEY, f"{where}: frames entries are {{image: PATH, at: INDEX}}; got {entry!r}")
        frames.append((_file(path.parent, entry["image"], where, "guide image"), int(entry.get("at", 0))))
    mask = _file(path.parent, row["mask"], where, "mask") if row.get("mask") else None
    video = (path.parent / str(row["video"])).expanduser().resolve()
    label = row.get("label")
    return BenchmarkRow(name=str(row.get("name") or video.stem), prompt=str(row.get("prompt") or ""),
                        label=None if label is None else str(label), video=video, frames=frames, mask=mask)


def clip_of_row(row: BenchmarkRow) -> Clip:
    """The row's video with its guides resized to the video's size (a guide index past the clip is an error)."""
    video = read_video(row.video)
    count, height, width = video.shape[:3]
    indices, given = [], []
    for image, at in row.frames:
        index = at if at >= 0 else count + at
        if not 0 <= index < count:
            raise ValueError(f"guide index {at} is outside the {count} frames of {row.video.name}")
        indices.append(index)
        given.append(read_image(image, size=(height, width)))
    keep = None
    if indices:
        region = binary_mask(read_image(row.mask, size=(height, width)), KEY) if row.mask else \
            np.ones((height, width), dtype=bool)
        keep = np.repeat(np.asarray(region, dtype=bool)[None], len(indices), axis=0)
    return Clip(name=row.name, frames=video, prompt=row.prompt, guide_indices=indices,
                guide_frames=np.stack(given) if given else None, guide_keep=keep)
