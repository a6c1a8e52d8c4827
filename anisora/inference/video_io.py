"""Video and image files: H.264 mp4 through PyAV, PNG through Pillow; every write is atomic."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary sibling, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def encode_mp4(frames: np.ndarray, fps: int = 8, crf: int = 10) -> bytes:
    """uint8 (F, H, W, 3) -> H.264 (yuv420p) mp4 bytes."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 (F, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frames: H.264 (yuv420p) needs an even height and width, got {h}x{w}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    return atomic_write_bytes(path, encode_mp4(frames, fps))


def read_video(path: str | Path) -> np.ndarray:
    """mp4 (or any PyAV-readable video) -> uint8 (F, H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as ex:
        raise ValueError(f"video {path} could not be decoded: {ex}") from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png_frames(folder: str | Path, frames: np.ndarray, prefix: str = "frame_") -> list[Path]:
    """One lossless PNG per frame (frame_0000.png, ...)."""
    folder = Path(folder)
    return [atomic_write_bytes(folder / f"{prefix}{i:04d}.png", encode_png(f)) for i, f in enumerate(frames)]


def write_contact_sheet(path: str | Path, frames: np.ndarray, columns: int | None = None, scale: int = 1) -> Path:
    """All frames of a clip (F, H, W, 3) on one PNG grid, row-major, 1-pixel white separators."""
    n, h, w, _ = frames.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    sheet = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = frame
    image = Image.fromarray(sheet)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return atomic_write_bytes(path, encode_png(np.asarray(image)))


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file -> uint8 (H, W, 3) RGB, resized (bicubic) to size=(H, W) when given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and (img.height, img.width) != tuple(size):
                img = img.resize((size[1], size[0]), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8).copy()
    except OSError as ex:
        raise ValueError(f"image {path} could not be read: {ex}") from None
