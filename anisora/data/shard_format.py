"""The shard sample format: what one encoded clip holds, and how it is written to and read from a tar.

One sample = one tar member per field, all named `<key>.<field>`:

    latents.pth          (C, T, h, w) normalised clip latents
    text.pth             (L, D) caption embedding (absent when the model trains its text encoder)
    guide_<mode>.pth     the backbone's guidance channels for guide mode <mode> ("none" = no guide)
    image_<mode>.pth     image-encoder tokens for that mode (families that use them)
    meta.json            caption, scores, fps, frame count, size, source, clip id, shapes and dtype

Tars are written deterministically (sorted members, zero mtimes and owners), so the same clips and
model always give byte-identical shards, and a shard appears whole or not at all (temporary file, rename).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from braceexpand import braceexpand

from anisora.config.errors import ConfigError
from anisora.io import atomic_write

LATENTS, TEXT, META = "latents.pth", "text.pth", "meta.json"
GUIDE_PREFIX, IMAGE_PREFIX = "guide_", "image_"
NO_GUIDE = "none"
NULL_TEXT, DATASET_INFO = "null_text.pth", "dataset.json"
TAR_BLOCK = 512


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """torch.save of a contiguous clone (a view would save its whole storage), deterministic bytes."""
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous().clone(), buffer)
    return buffer.getvalue()


def load_tensor(data: bytes) -> torch.Tensor:
    value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"expected a tensor, got {type(value).__name__}")
    return value


def encode_sample(latents: torch.Tensor, text: torch.Tensor | None, guides: dict[str, torch.Tensor],
                  images: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, bytes]:
    """Field name -> bytes of one sample."""
    fields = {LATENTS: tensor_bytes(latents), META: json.dumps(meta, sort_keys=True).encode()}
    if text is not None:
        fields[TEXT] = tensor_bytes(text)
    for mode, tensor in guides.items():
        fields[f"{GUIDE_PREFIX}{mode}.pth"] = tensor_bytes(tensor)
    for mode, tensor in images.items():
        fields[f"{IMAGE_PREFIX}{mode}.pth"] = tensor_bytes(tensor)
    return fields


def decode_sample(fields: dict[str, bytes]) -> dict[str, Any]:
    """Bytes of one sample -> tensors and meta; raises ValueError (or a torch/pickle error) when corrupt."""
    if LATENTS not in fields or META not in fields:
        raise ValueError(f"missing {LATENTS} or {META} (has {sorted(fields)})")
    meta = json.loads(fields[META])
    latents = load_tensor(fields[LATENTS])
    if list(latents.shape) != list(meta.get("latent_shape", latents.shape)):
        raise ValueError(f"latents have shape {list(latents.shape)}, meta.json says {meta['latent_shape']}")
    out: dict[str, Any] = {"latents": latents, "meta": meta, "guides": {}, "images": {},
                           "text": load_tensor(fields[TEXT]) if TEXT in fields else None}
    for name, data in fields.items():
        for prefix, key in ((GUIDE_PREFIX, "guides"), (IMAGE_PREFIX, "images")):
            if name.startswith(prefix) and name.endswith(".pth"):
                out[key][name[len(prefix) : -len(".pth")]] = load_tensor(data)
    return out


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def member_size(size: int) -> int:
    """Bytes a member of `size` bytes takes in a tar: header block plus data padded to whole blocks."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def _write_tar_file(target: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(target, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, fields in samples:
            for name in sorted(fields):
                data = fields[name]
                tar.addfile(_member(f"{key}.{name}", len(data)), io.BytesIO(data))


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> int:
    """Samples (key, fields) -> `path`, atomically; members in sample order, fields sorted. Returns the size."""
    return atomic_write(path, lambda tmp: _write_tar_file(tmp, samples)).stat().st_size


def read_tar(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, fields) of each sample, in file order; a damaged tar raises tarfile.TarError / OSError."""
    key, fields = None, {}
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            name_key, _, field = base.partition(".")
            data = tar.extractfile(member).read()
            if name_key != key and key is not None:
                yield key, fields
                fields = {}
            key = name_key
            fields[field] = data
    if key is not None:
        yield key, fields


def expand_urls(urls: Any, key: str = "data.urls") -> list[str]:
    """Local shard paths from a path, a brace pattern ('/d/{000000..000009}.tar') or a list of them."""
    if urls is None or urls == "" or urls == []:
        raise ConfigError(key, "give shard files, e.g. data.urls='/data/shards/{000000..000009}.tar'")
    patterns = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    paths: list[str] = []
    for pattern in patterns:
        expanded = [p for p in braceexpand(pattern) if p]
        if not expanded:
            raise ConfigError(key, f"{pattern!r} expands to no files")
        paths.extend(str(Path(p).expanduser()) for p in expanded)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(key, f"shard {missing[0]} does not exist{more}")
    return paths
