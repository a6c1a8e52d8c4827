"""Reading a manifest clip from its source video at the model's frame rate, frame count and size.

Clips cut from one episode come in manifest order, so the reader keeps the source open and decodes
forward from where the last clip ended instead of decoding the episode again for every clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anisora.data.manifest import ClipRecord


class ClipReadError(ValueError):
    """A clip that cannot be read or does not hold enough frames: skipped by the encoder, with this reason."""


@dataclass(frozen=True)
class ClipFormat:
    """What the model trains on: `fps` None keeps the source's consecutive frames."""

    num_frames: int
    height: int
    width: int
    fps: float | None = None


def source_indices(record: ClipRecord, fmt: ClipFormat, source_fps: float) -> list[int]:
    """Source frame numbers of the output frames: frame k is the source frame nearest time k / fps."""
    if fmt.fps is None or source_fps <= 0:
        picks = [record.start_frame + k for k in range(fmt.num_frames)]
    else:
        step = source_fps / fmt.fps
        picks = [record.start_frame + int(math.floor(k * step + 1e-6)) for k in range(fmt.num_frames)]
    if picks[-1] >= record.end_frame:
        need = picks[-1] - record.start_frame + 1
        raise ClipReadError(f"clip has {record.num_frames} frames; {fmt.num_frames} frames at "
                            f"{fmt.fps or source_fps:g} fps need {need}")
    return picks


def resize_centre_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (F, H, W, 3) -> (F, height, width, 3): scale so the target is covered, then crop the centre."""
    _, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if scale < 1:  # area averaging: a box filter, which keeps flat cel colours flat
        x = F.interpolate(x, size=(sh, sw), mode="area")
    else:
        x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
    top, left = (sh - height) // 2, (sw - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class SourceReader:
    """Decodes clips from source files, reusing the open decoder while requests move forward in a file."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._container = None
        self._frames = None  # iterator over decoded frames
        self._next = 0  # number of the frame the iterator yields next
        self.fps = 0.0

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._path, self._container, self._frames, self._next = None, None, None, 0

    def _open(self, path: str) -> None:
        import av  # the decoder is needed only where a clip is read: writing tensor shards needs none

        self.close()
        try:
            self._container = av.open(path)
            stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as ex:
            self.close()
            raise ClipReadError(f"cannot open {path}: {ex}".splitlines()[0]) from None
        self.fps = float(stream.average_rate or 0.0)
        self._frames = self._container.decode(stream)
        self._path = path

    def frames(self, record: ClipRecord, fmt: ClipFormat) -> np.ndarray:
        """uint8 (num_frames, height, width, 3) of a clip, resampled and cropped to `fmt`."""
        import av

        if self._path != record.source or self._next > record.start_frame:
            self._open(record.source)
        picks = source_indices(record, fmt, record.fps or self.fps)
        wanted, out = set(picks), {}
        try:
            while self._next <= picks[-1]:
                frame = next(self._frames)
                if self._next in wanted:
                    out[self._next] = frame.to_ndarray(format="rgb24")
                self._next += 1
        except StopIteration:
            self.close()
            raise ClipReadError(f"{record.source} ends at frame {self._next}; the clip needs frame {picks[-1]}") \
                from None
        except av.error.FFmpegError as ex:
            self.close()
            raise ClipReadError(f"cannot decode {record.source}: {ex}".splitlines()[0]) from None
        return resize_centre_crop(np.stack([out[i] for i in picks]), fmt.height, fmt.width)
