"""Checkpoint files are written whole or not at all: temp file, fsync, atomic rename."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from anisora.config.errors import ConfigError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class AtomicCheckpointIO(TorchCheckpointIO):
    """A killed run never leaves a half-written .ckpt for `ckpt_path=last` to trip over."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_torch_save(checkpoint, path)


def write_atomically(dst: Path, overwrite: bool, write: Callable[[Path], None], key: str = "DST") -> None:
    """`write` fills a temporary sibling folder, which then replaces DST (kept as it was on any failure)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old: Path | None = None
    try:
        write(tmp)
        if dst.is_dir() and any(dst.iterdir()):
            if not overwrite:
                raise ConfigError(key, f"{dst} was filled by someone else while it was being written")
            old = dst.parent / f".{dst.name}.replaced-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            dst.rename(old)
        elif dst.is_dir():
            dst.rmdir()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dst.exists():
            old.rename(dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
