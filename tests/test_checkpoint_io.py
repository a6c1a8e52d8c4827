"""Checkpoints are written whole or not at all, and the data position survives a checkpoint."""

from __future__ import annotations

import pytest
import torch

from anisora.accelerators.checkpoint_io import AtomicCheckpointIO
from anisora.data.datamodule import SyntheticClipStream, SyntheticDataModule
from anisora.data.synthetic import WorldConfig


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stream_restarts_at_the_saved_position():
    world = WorldConfig(num_frames=5, height=8, width=8, sprite_size=3)
    full = SyntheticClipStream(world, seed=0)
    first = [item["index"] for _, item in zip(range(6), full)]
    dm = SyntheticDataModule(world, seed=0, batch_size=2)
    dm.load_state_dict({"samples_seen": 4})
    resumed = next(iter(dm.train_dataloader()))
    assert resumed["index"] == first[4:6]
    assert resumed["seed"] != next(iter(SyntheticDataModule(world, 0, 2).train_dataloader()))["seed"]
