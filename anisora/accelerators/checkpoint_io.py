"""Checkpoint files and folders are written whole or not at all (through `anisora.io`).

One process writes a single-file checkpoint (`AtomicCheckpointIO`); a sharded one (FSDP with
`state_dict_type=sharded`, DeepSpeed) is a folder every rank writes into (`FolderCheckpoints`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from anisora.io import atomic_write, remove_folder, replace_folder, temporary_sibling


def _torch_save(obj: Any, target: Path) -> None:
    with open(target, "wb") as fh:
        torch.save(obj, fh)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A killed run never leaves a half-written .ckpt for `ckpt_path=last` to trip over."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_write(path, lambda tmp: _torch_save(checkpoint, tmp))


class FolderCheckpoints:
    """Mixed into a Lightning strategy whose checkpoint is a folder all ranks write: every rank writes into one
    hidden sibling (its name chosen by rank 0), and after all have finished rank 0 swaps it in for the old folder.
    A run killed mid-save keeps its previous `last.ckpt` whole, which the resumed run then loads."""

    def writes_folder(self) -> bool:
        """DeepSpeed always writes a folder; FSDP does under `state_dict_type=sharded` (else one file, rank 0)."""
        return getattr(self, "_state_dict_type", "sharded") == "sharded"

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self.writes_folder():
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        partial = Path(self.broadcast(str(temporary_sibling(target, "partial"))))
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
        except BaseException:
            if self.is_global_zero:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        self.barrier("anisora_checkpoint_written")
        if self.is_global_zero:
            if target.is_file():  # a full checkpoint of an earlier run in the same place
                target.unlink()
            replace_folder(partial, target)
        self.barrier("anisora_checkpoint_swapped")

    def remove_checkpoint(self, filepath) -> None:
        """An old folder (save_top_k) is renamed to a hidden name before it is deleted: a run killed mid-delete
        leaves no visible, half-deleted checkpoint for a user or `ckpt_path` to pick up."""
        path = Path(filepath)
        if not (self.writes_folder() and path.is_dir()):
            return super().remove_checkpoint(filepath)
        if self.is_global_zero:
            remove_folder(path)
