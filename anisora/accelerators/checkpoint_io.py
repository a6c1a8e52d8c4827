"""Checkpoint files are written whole or not at all (through `anisora.io.atomic_write`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from anisora.io import atomic_write


def _torch_save(obj: Any, target: Path) -> None:
    with open(target, "wb") as fh:
        torch.save(obj, fh)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A killed run never leaves a half-written .ckpt for `ckpt_path=last` to trip over."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_write(path, lambda tmp: _torch_save(checkpoint, tmp))
