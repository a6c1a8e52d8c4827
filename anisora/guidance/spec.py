"""From a `guide=` config to a checked guide spec, and from the spec to the (G, M) pair.

Every inference mode (first, last, first+last, first+middle+last, keyframes, a region mask, a mask
video, a guide video) is parsed here into the same `GuideSpec`; all checks run before any model is
built and fail with one line naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anisora.config.errors import ConfigError

MID = "mid"  # the middle frame, (F - 1) // 2, where AniSora V1 puts its middle keyframe
GREY_LIMIT = 0.05  # a mask with more grey pixels than this fraction is not a black/white mask
MODES_NEEDING_FRAMES = ("keyframes",)
#: guide modes precomputed per clip by `anisora-data encode`: the frames each keeps (as conf/guide/<mode>.yaml)
STORED_MODE_FRAMES: dict[str, tuple[int | str, ...]] = {"i2v": (0,), "last": (-1,), "flf2v": (0, -1),
                                                         "mid": (0, MID, -1)}


@dataclass(frozen=True)
class GuideSpec:
    """Resolved guidance: pixel frame indices, an image per index (None = from the reference clip),
    and optional region mask image, per-frame mask video and guide video."""

    indices: tuple[int, ...]
    images: tuple[str | None, ...]
    mask: str | None = None
    mask_video: str | None = None
    video: str | None = None


def resolve_index(index: int | str, num_frames: int, key: str) -> int:
    """An index that may be negative (from the end) or "mid"."""
    if index == MID:
        return (num_frames - 1) // 2
    if isinstance(index, str):
        try:
            index = int(index)
        except ValueError:
            raise ConfigError(key, f"expected a frame index or 'mid', got {index!r}") from None
    resolved = index + num_frames if index < 0 else index
    if not 0 <= resolved < num_frames:
        raise ConfigError(key, f"frame index {index} is outside a clip of {num_frames} frames")
    return resolved


def _entries(guide: Mapping[str, Any]) -> list[tuple[Any, str | None, str]]:
    """(index, image or None, key) per guide frame, from `frames` + `indices` or from `frames` of {image, at}."""
    frames, indices = list(guide.get("frames") or []), list(guide.get("indices") or [])
    if frames and all(isinstance(f, Mapping) for f in frames):
        out = []
        for i, f in enumerate(frames):
            if "image" not in f or "at" not in f:
                raise ConfigError(f"guide.frames[{i}]", "a keyframe needs `image` and `at`: {image: a.png, at: 0}")
            out.append((f["at"], str(f["image"]), f"guide.frames[{i}].at"))
        return out
    if any(isinstance(f, Mapping) for f in frames):
        raise ConfigError("guide.frames", "give image paths (with guide.indices) or {image, at} entries, not both")
    if frames and len(frames) != len(indices):
        raise ConfigError("guide.frames", f"{len(frames)} images for {len(indices)} guide.indices {indices}; "
                          "give one image per index")
    images = [str(f) for f in frames] or [None] * len(indices)
    return [(index, image, f"guide.indices[{i}]") for i, (index, image) in enumerate(zip(indices, images))]


def guide_spec(guide: Mapping[str, Any], num_frames: int) -> GuideSpec:
    """Check and resolve a guide config for clips of `num_frames` frames."""
    mode = guide.get("mode", "i2v")
    entries = _entries(guide)
    if mode in MODES_NEEDING_FRAMES and not entries:
        raise ConfigError("guide.frames", f"guide={mode} needs frames, e.g. guide.frames='[{{image: a.png, at: 0}}]'")
    if mode == "region" and not (guide.get("mask") or guide.get("mask_video")):
        raise ConfigError("guide.mask", "guide=region needs a mask (white = keep, black = free): guide.mask=m.png")
    if mode == "video" and not guide.get("video"):
        raise ConfigError("guide.video", "guide=video needs a guide video: guide.video=clip.mp4")
    seen: dict[int, str] = {}
    indices, images = [], []
    for index, image, key in entries:
        f = resolve_index(index, num_frames, key)
        if f in seen:
            raise ConfigError(key, f"{index!r} is frame {f}, already given by {seen[f]}")
        seen[f] = key
        indices.append(f)
        images.append(image)
    for key in ("mask", "mask_video", "video"):
        path = guide.get(key)
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"guide.{key}", f"{path} does not exist")
    for image, key in zip(images, seen.values()):
        if image is not None and not Path(image).expanduser().is_file():
            raise ConfigError(key.split(".at")[0].replace("indices", "frames"), f"guide image {image} does not exist")
    return GuideSpec(tuple(indices), tuple(images), guide.get("mask") or None, guide.get("mask_video") or None,
                     guide.get("video") or None)


def stored_mode_indices(mode: str, num_frames: int) -> list[int]:
    """Pixel frames a stored guide mode keeps, in a clip of `num_frames` frames."""
    return sorted({resolve_index(i, num_frames, f"guides.{mode}") for i in STORED_MODE_FRAMES[mode]})


def stored_mode_slots(mode: str | None, temporal_factor: int, latent_frames: int) -> list[int]:
    """Latent frames that hold a stored mode's guide frames (none for no guide)."""
    if mode is None:
        return []
    num_frames = (latent_frames - 1) * temporal_factor + 1
    return sorted({latent_slot(f, temporal_factor) for f in stored_mode_indices(mode, num_frames)})


def latent_slot(index: int, temporal_factor: int) -> int:
    """The latent frame a pixel frame falls in: frame 0 alone, then groups of `temporal_factor`."""
    return 0 if index == 0 else (index - 1) // temporal_factor + 1


def check_one_guide_per_slot(indices: Sequence[int], temporal_factor: int, key: str = "guide.indices") -> None:
    """For backbones that encode each guide frame into its own latent slot (CogVideoX, AniSora V1)."""
    taken: dict[int, int] = {}
    for f in indices:
        slot = latent_slot(f, temporal_factor)
        if slot in taken:
            raise ConfigError(key, f"frames {taken[slot]} and {f} fall in the same latent frame {slot} "
                              f"(x{temporal_factor} temporal compression); keep one of them")
        taken[slot] = f


def binary_mask(pixels: np.ndarray, key: str, threshold: float = 0.5) -> np.ndarray:
    """(..., H, W[, C]) uint8 -> bool (True = keep); refuses masks that are mostly grey rather than black/white."""
    grey = pixels.mean(axis=-1) if pixels.ndim >= 3 and pixels.shape[-1] in (3, 4) else pixels
    grey = grey.astype(np.float32)
    share = float(((grey > 32) & (grey < 223)).mean())
    if share > GREY_LIMIT:
        raise ConfigError(key, f"not a black/white mask: {share:.0%} of its pixels are grey (32..223); "
                          "use white for pixels to keep and black for pixels free to change")
    return grey >= threshold * 255


def build_pair(spec: GuideSpec, num_frames: int, height: int, width: int,
               load_image: Callable[[str], np.ndarray], load_video: Callable[[str], np.ndarray],
               reference: torch.Tensor | None = None, threshold: float = 0.5,
               load_mask: Callable[[str], np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (G, M) pair of a spec: G (3, F, H, W) in [-1, 1], zeros where M (F, H, W) is 0.

    Pixels come from the guide video, else `reference` (3, F, H, W; a benchmark clip), with the spec's
    images placed at their indices. M is 1 on the guided frames (every frame of a guide video when no
    index is given), times the region mask; a mask video sets M frame by frame instead.
    `load_image`/`load_video` return uint8 arrays already at (H, W)."""
    source = reference.clone() if reference is not None else torch.zeros(3, num_frames, height, width)
    if spec.video is not None:
        source = _frames(load_video(spec.video), num_frames, "guide.video")
    for f, image in zip(spec.indices, spec.images):
        if image is not None:
            source[:, f] = torch.from_numpy(load_image(image)).permute(2, 0, 1).float() / 127.5 - 1.0
        elif reference is None and spec.video is None:
            raise ConfigError("guide.frames", f"frame {f} has no image and there is no clip to take it from")
    if spec.mask_video is not None:
        frames = _frame_count(binary_mask(load_video(spec.mask_video), "guide.mask_video", threshold), num_frames,
                              "guide.mask_video")
        mask = torch.from_numpy(np.ascontiguousarray(frames)).float()
    else:
        mask = torch.zeros(num_frames, height, width)
        given = list(spec.indices) if spec.indices else (list(range(num_frames)) if spec.video else [])
        mask[given] = 1.0
        if spec.mask is not None:
            region = binary_mask((load_mask or load_image)(spec.mask), "guide.mask", threshold)
            mask = mask * torch.from_numpy(region).float()
    return source * mask[None], mask


def _frame_count(frames: np.ndarray, num_frames: int, key: str) -> np.ndarray:
    if len(frames) < num_frames:
        raise ConfigError(key, f"has {len(frames)} frames; the clip needs {num_frames}")
    return frames[:num_frames]


def _frames(pixels: np.ndarray, num_frames: int, key: str) -> torch.Tensor:
    pixels = _frame_count(pixels, num_frames, key)
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
