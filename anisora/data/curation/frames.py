"""Reading sources for curation: which files an input names, and their frames one at a time.

Videos (mp4, mkv, webm, mov, ...) decode through PyAV; gif and webp through Pillow, because FFmpeg's
WebP decoder does not read animated WebP. Frames stream so a long episode never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from anisora.config.errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
IMAGE_SUFFIXES = (".gif", ".webp")
SIDECAR_SUFFIXES = (".txt", ".json")


class SourceError(Exception):
    """A source that cannot be curated (corrupt, empty, not a video); its message is one line."""


@dataclass(frozen=True)
class StreamInfo:
    fps: float
    width: int
    height: int


def _is_sidecar(path: Path) -> bool:
    """Caption sidecars (<stem>.txt / <stem>.json beside a video) are not sources."""
    if path.suffix.lower() not in SIDECAR_SUFFIXES:
        return False
    return any(path.with_suffix(s).exists() or path.with_suffix(s.upper()).exists()
               for s in VIDEO_SUFFIXES + IMAGE_SUFFIXES)


def list_sources(spec: str | Path, key: str = "input") -> list[Path]:
    """Absolute paths, sorted: every visible file under a folder (except caption sidecars), or the lines of
    a list file (blank lines and '#' comments skipped; relative lines are relative to the list)."""
    root = Path(spec).expanduser()
    if root.is_dir():
        files = [p for p in root.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts) and not _is_sidecar(p)]
    elif root.is_file():
        lines = [line.strip() for line in root.read_text(errors="replace").splitlines()]
        files = [Path(line).expanduser() for line in lines if line and not line.startswith("#")]
        files = [p if p.is_absolute() else root.parent / p for p in files]
    else:
        raise ConfigError(key, f"{root} does not exist (expected a folder of videos or a text file listing them)")
    sources = sorted({p.resolve() for p in files}, key=str)
    if not sources:
        raise ConfigError(key, f"no files under {root}")
    return sources


def _one_line(ex: BaseException) -> str:
    text = " ".join(str(ex).split()) or type(ex).__name__
    return text[:300]


def _pyav_frames(path: Path) -> tuple[StreamInfo, Iterator[np.ndarray]]:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as ex:
        raise SourceError(f"not a readable video: {_one_line(ex)}") from None
    if not container.streams.video:
        container.close()
        raise SourceError("no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    width, height = stream.codec_context.width, stream.codec_context.height
    if fps <= 0 or width <= 0 or height <= 0:
        container.close()
        raise SourceError(f"no usable frame rate or size (fps {fps}, {width}x{height})")

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, ValueError) as ex:
            raise SourceError(f"decoding failed: {_one_line(ex)}") from None
        finally:
            container.close()

    return StreamInfo(fps, width, height), frames()


def _pil_frames(path: Path) -> tuple[StreamInfo, Iterator[np.ndarray]]:
    try:
        image = Image.open(path)
        image.load()
    except Exception as ex:  # Pillow raises many types for bad files
        raise SourceError(f"not a readable image sequence: {_one_line(ex)}") from None
    count = int(getattr(image, "n_frames", 1))
    durations = []
    for i in range(min(count, 50)):
        image.seek(i)
        durations.append(float(image.info.get("duration") or 0.0))
    image.seek(0)
    positive = [d for d in durations if d > 0]
    fps = 1000.0 / float(np.median(positive)) if positive else 10.0  # browsers play unset delays at 10 fps
    info = StreamInfo(round(fps, 6), image.width, image.height)

    def frames() -> Iterator[np.ndarray]:
        try:
            for i in range(count):
                image.seek(i)
                yield np.asarray(image.convert("RGB"))
        except Exception as ex:
            raise SourceError(f"decoding failed: {_one_line(ex)}") from None
        finally:
            image.close()

    return info, frames()


def open_frames(path: Path) -> tuple[StreamInfo, Iterator[np.ndarray]]:
    """(stream info, iterator of uint8 (H, W, 3) RGB frames); SourceError when the file is no video."""
    if not path.is_file():
        raise SourceError("file does not exist")
    if path.stat().st_size == 0:
        raise SourceError("empty file")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _pil_frames(path)
    if suffix in VIDEO_SUFFIXES:
        return _pyav_frames(path)
    raise SourceError(f"not a video file ({suffix or 'no suffix'}; read: "
                      f"{', '.join(s[1:] for s in VIDEO_SUFFIXES + IMAGE_SUFFIXES)})")
