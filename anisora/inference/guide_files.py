"""Guide images, masks and videos from disk, at the clip's size, with the configured size rule."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anisora.config.errors import ConfigError
from anisora.inference.video_io import read_image, read_video


def guide_paths(guide: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(config key, path) of every file a guide config names."""
    out = []
    for i, f in enumerate(guide.get("frames") or []):
        if isinstance(f, Mapping):
            if f.get("image") is not None:
                out.append((f"guide.frames[{i}].image", str(f["image"])))
        else:
            out.append(("guide.frames", str(f)))
    out += [(f"guide.{k}", str(guide[k])) for k in ("mask", "mask_video", "video") if guide.get(k)]
    return out


def check_guide_paths(guide: Mapping[str, Any]) -> bool:
    """Every named file exists (one-line error otherwise); True when the guide brings its own pixels."""
    paths = guide_paths(guide)
    for key, path in paths:
        if not Path(path).expanduser().is_file():
            what = "guide image" if key.startswith("guide.frames") else "file"
            raise ConfigError(key, f"{what} {path} does not exist")
    return any(k.startswith("guide.frames") or k == "guide.video" for k, _ in paths)


class GuideFiles:
    """Loads guide files at (height, width): resized when `resize` (bicubic for pictures, nearest for
    masks), refused with a one-line error naming the file otherwise."""

    def __init__(self, height: int, width: int, resize: bool) -> None:
        self.height, self.width, self.resize = height, width, resize

    def _check_size(self, path: str, h: int, w: int) -> None:
        if (h, w) != (self.height, self.width) and not self.resize:
            raise ConfigError("guide.resize", f"{path} is {w}x{h} but the clip is {self.width}x{self.height}; "
                              "resize it or set guide.resize=true")

    def image(self, path: str) -> np.ndarray:
        with Image.open(Path(path).expanduser()) as img:
            self._check_size(path, img.height, img.width)
        return read_image(Path(path).expanduser(), size=(self.height, self.width))

    def mask(self, path: str) -> np.ndarray:
        """A mask image, resized with nearest neighbours so it stays black and white."""
        with Image.open(Path(path).expanduser()) as img:
            self._check_size(path, img.height, img.width)
            img = img.convert("RGB")
            if (img.height, img.width) != (self.height, self.width):
                img = img.resize((self.width, self.height), Image.Resampling.NEAREST)
            return np.array(img, dtype=np.uint8)

    def video(self, path: str) -> np.ndarray:
        frames = read_video(Path(path).expanduser())
        self._check_size(path, frames.shape[1], frames.shape[2])
        if frames.shape[1:3] == (self.height, self.width):
            return frames
        return np.stack([np.asarray(Image.fromarray(f).resize((self.width, self.height), Image.Resampling.NEAREST))
                         for f in frames])
