"""Video and image files: H.264 mp4 through PyAV, PNG through Pillow.

Every write goes through `anisora.io.atomic_write` (a hidden temporary sibling renamed into place), so
a crash or a reader polling the output folder (W&B, a training callback, a user) never sees half a file.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from anisora.io import atomic_write

MP4_CRF = 10  # near-lossless: evaluation re-reads these files, so coding noise must stay below the metrics
MP4_PRESET = "medium"
DISPLAY_SIDE = 128  # px: tiny clips are blown up to this shorter side, so players and W&B show them usably
# BT.601, limited range: swscale's default matrix both ways, tagged so players decode it the same way.
# Chroma is box-averaged ("AREA") when subsampled: it keeps flat cel colours truer at sprite edges.
_BT601, _LIMITED_RANGE = 6, 1


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 (F, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if len(frames) == 0:
        raise ValueError("frames: expected at least one frame, got 0")
    return frames


def _encode_mp4(target: Path, frames: np.ndarray, fps: int) -> None:
    _, h, w, _ = frames.shape
    faststart = {"movflags": "+faststart"}  # index first: browsers and W&B can play while downloading
    with av.open(str(target), mode="w", format="mp4", container_options=faststart) as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(MP4_CRF), "preset": MP4_PRESET}
        ctx = stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT601
        ctx.color_range = _LIMITED_RANGE
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            yuv = rgb.reformat(format="yuv420p", dst_colorspace=_BT601, interpolation="AREA")
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())


def display_scale(height: int, width: int, side: int = DISPLAY_SIDE) -> int:
    """Smallest integer upscaling that brings the shorter side to at least `side` pixels (1 for large clips).

    Kept even when a side is odd, so the upscaled size still suits yuv420p.
    """
    scale = max(1, math.ceil(side / max(1, min(int(height), int(width)))))
    if scale > 1 and scale % 2 and (height % 2 or width % 2):
        scale += 1
    return scale


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor: flat cel colours stay flat."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return frames if scale == 1 else frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def downscale_frames(frames: np.ndarray, factor: int) -> np.ndarray:
    """Undo `upscale`: mean over factor x factor blocks, which also averages away most coding noise."""
    if factor < 1:
        raise ValueError(f"downscale must be >= 1, got {factor}")
    if factor == 1:
        return frames
    f, h, w, c = frames.shape
    if h % factor or w % factor:
        raise ValueError(f"downscale {factor} does not divide the video size {h}x{w}")
    blocks = frames.reshape(f, h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.clip(np.rint(blocks.mean(axis=(2, 4))), 0, 255).astype(np.uint8)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8, scale: int = 1) -> Path:
    """Encode uint8 (F, H, W, 3) frames as an H.264 (yuv420p, crf 10) mp4, written atomically.

    `scale` > 1 upscales (nearest neighbour) first, for viewing; `read_video(..., downscale=scale)` undoes it.
    """
    frames = upscale(_check_frames(frames), scale)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frames: H.264 yuv420p needs an even height and width, got {h}x{w} (HxW)")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return atomic_write(path, lambda tmp: _encode_mp4(tmp, frames, fps))


def read_video(path: str | Path, downscale: int = 1) -> np.ndarray:
    """Decode every frame of a video file (mp4 or anything FFmpeg reads) -> uint8 (F, H, W, 3) RGB.

    `downscale` undoes the `scale` a clip was written with (block mean).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"video {path} has no video stream")
            expected = container.streams.video[0].frames  # from the index; 0 when the container does not say
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as ex:
        raise ValueError(f"video {path} could not be decoded: {ex}".splitlines()[0]) from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    if len(frames) < expected:  # cut at a packet boundary: FFmpeg stops quietly at the end of the data
        raise ValueError(f"video {path} is truncated: {len(frames)} of its {expected} frames decode")
    return downscale_frames(np.stack(frames), downscale)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> lossless PNG bytes (for `atomic_write_bytes`)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _save_png(image: np.ndarray) -> Callable[[Path], None]:
    return lambda tmp: tmp.write_bytes(encode_png(image))


def write_png_frames(folder: str | Path, frames: np.ndarray, prefix: str = "frame_") -> list[Path]:
    """One lossless PNG per frame (`frame_0000.png`, ...), each written atomically."""
    frames = _check_frames(frames)
    folder = Path(folder)
    return [atomic_write(folder / f"{prefix}{i:04d}.png", _save_png(f)) for i, f in enumerate(frames)]


def contact_sheet(frames: np.ndarray, columns: int | None = None, scale: int = 1) -> np.ndarray:
    """All frames on one uint8 grid, row-major, with 1-pixel white separators, upscaled by `scale`."""
    frames = _check_frames(frames)
    n, h, w, _ = frames.shape
    columns = math.ceil(math.sqrt(n)) if columns is None else columns
    if columns < 1 or scale < 1:
        raise ValueError(f"contact sheet: columns and scale must be >= 1, got {columns=} {scale=}")
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    sheet = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = frame
    return upscale(sheet, scale)


def write_contact_sheet(path: str | Path, frames: np.ndarray, columns: int | None = None,
                        scale: int = 1) -> Path:
    """Write `contact_sheet(...)` as one PNG, atomically; columns default to ceil(sqrt(F))."""
    return atomic_write(path, _save_png(contact_sheet(frames, columns, scale)))


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file -> uint8 (H, W, 3) RGB; resized (bicubic) when `size=(H, W)` differs from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                height, width = (int(s) for s in size)
                if (img.height, img.width) != (height, width):
                    img = img.resize((width, height), Image.Resampling.BICUBIC)
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as ex:
        raise ValueError(f"image {path} could not be read: {ex}".splitlines()[0]) from None
