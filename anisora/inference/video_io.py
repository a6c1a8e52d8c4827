"""Video and image files: H.264 mp4 through PyAV, PNG through Pillow.

Every write goes to a hidden temporary sibling first and is renamed into place, so a crash or a
reader polling the output folder (W&B, a training callback, a user) never sees a half-written file.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

MP4_CRF = 10  # near-lossless: evaluation re-reads these files, so coding noise must stay far below the metrics
MP4_PRESET = "medium"
# BT.601, limited range: the matrix swscale uses by default both ways, tagged so players decode it the same way.
_BT601, _LIMITED_RANGE = 6, 1


def _temporary_sibling(path: Path) -> Path:
    """A hidden name next to `path`, so os.replace stays a same-filesystem rename; the suffix is kept."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)`, fsync tmp, then rename it to `path`; the temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary sibling + fsync + rename); creates the parent folder."""
    return _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 (F, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if len(frames) == 0:
        raise ValueError("frames: expected at least one frame, got 0")
    return frames


def _encode_mp4(target: Path, frames: np.ndarray, fps: int) -> None:
    _, h, w, _ = frames.shape
    with av.open(str(target), mode="w", format="mp4", container_options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(MP4_CRF), "preset": MP4_PRESET}
        ctx = stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT601
        ctx.color_range = _LIMITED_RANGE
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(rgb.reformat(format="yuv420p", dst_colorspace=_BT601)))
        container.mux(stream.encode())


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Encode uint8 (F, H, W, 3) frames as an H.264 (yuv420p, crf 10) mp4, written atomically."""
    frames = _check_frames(frames)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frames: H.264 yuv420p needs an even height and width, got {h}x{w} (HxW)")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return _atomic_write(path, lambda tmp: _encode_mp4(tmp, frames, fps))


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file (mp4 or anything FFmpeg reads) -> uint8 (F, H, W, 3) RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"video file {path} has no video stream")
            frames = [f.to_ndarray(format="rgb24", src_colorspace=_BT601) for f in container.decode(video=0)]
    except av.error.FFmpegError as ex:
        raise ValueError(f"video file {path} could not be decoded: {ex}") from None
    if not frames:
        raise ValueError(f"video file {path} has no frames")
    return np.stack(frames)


def _save_png(image: np.ndarray) -> Callable[[Path], None]:
    return lambda tmp: Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


def write_png_frames(folder: str | Path, frames: np.ndarray, prefix: str = "frame_") -> list[Path]:
    """One lossless PNG per frame (`frame_0000.png`, ...), each written atomically."""
    frames = _check_frames(frames)
    folder = Path(folder)
    return [_atomic_write(folder / f"{prefix}{i:04d}.png", _save_png(f)) for i, f in enumerate(frames)]


def contact_sheet(frames: np.ndarray, columns: int | None = None, scale: int = 1) -> np.ndarray:
    """All frames on one uint8 grid, row-major, with 1-pixel white separators, upscaled by `scale`."""
    frames = _check_frames(frames)
    n, h, w, _ = frames.shape
    columns = math.ceil(math.sqrt(n)) if columns is None else columns
    if columns < 1 or scale < 1:
        raise ValueError(f"contact sheet: columns and scale must be >= 1, got columns={columns} scale={scale}")
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    sheet = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = frame
    return sheet.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else sheet


def write_contact_sheet(path: str | Path, frames: np.ndarray, columns: int | None = None, scale: int = 1) -> Path:
    """Write `contact_sheet(frames, columns, scale)` as one PNG, atomically; columns default to ceil(sqrt(F))."""
    return _atomic_write(path, _save_png(contact_sheet(frames, columns, scale)))


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file -> uint8 (H, W, 3) RGB; resized (bicubic) when `size=(H, W)` differs from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                height, width = (int(s) for s in size)
                if (img.height, img.width) != (height, width):
                    img = img.resize((width, height), Image.Resampling.BICUBIC)
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as ex:
        raise ValueError(f"image file {path} could not be read: {ex}".splitlines()[0]) from None
