"""Checkpoints are written whole or not at all, and the data position survives a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anisora.accelerators.checkpoint_io import AtomicCheckpointIO, FolderCheckpoints
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


class ShardWriter:
    """Stands in for a sharded strategy (one process): writes two shard files and a metadata file into the folder
    it is given, or fails after the first shard."""

    is_global_zero = True
    fail = False

    def broadcast(self, obj):
        return obj

    def barrier(self, name=None):
        pass

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        folder = Path(filepath)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint["step"], folder / "shard_0.distcp")
        if self.fail:
            raise OSError("rank 1 died")
        torch.save(checkpoint["step"], folder / "shard_1.distcp")
        torch.save({"step": checkpoint["step"]}, folder / "meta.pt")


class FolderStrategy(FolderCheckpoints, ShardWriter):
    pass


def test_sharded_checkpoint_folder_is_swapped_in_whole_and_survives_a_failed_save(tmp_path):
    strategy = FolderStrategy()
    target = tmp_path / "last.ckpt"
    strategy.save_checkpoint({"step": 1}, target)
    strategy.save_checkpoint({"step": 2}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial or replaced sibling left
    assert [torch.load(target / n) for n in ("shard_0.distcp", "shard_1.distcp")] == [2, 2]

    strategy.fail = True
    with pytest.raises(OSError, match="rank 1 died"):
        strategy.save_checkpoint({"step": 3}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in target.iterdir()) == ["meta.pt", "shard_0.distcp", "shard_1.distcp"]
    assert torch.load(target / "shard_0.distcp") == 2  # the step-2 checkpoint, untouched


def test_a_one_file_fsdp_checkpoint_goes_straight_to_the_strategy(tmp_path):
    strategy = FolderStrategy()
    strategy._state_dict_type = "full"
    assert not strategy.writes_folder()
    strategy.save_checkpoint({"step": 1}, tmp_path / "last.ckpt")  # the base writes where it is told
    assert (tmp_path / "last.ckpt" / "meta.pt").is_file()


def test_a_removed_checkpoint_folder_is_never_visible_half_deleted(tmp_path, monkeypatch):
    """The folder is renamed hidden before its files go: a process killed mid-delete leaves only the hidden name."""
    import shutil

    from anisora import io

    folder = tmp_path / "step000002.ckpt"
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(b"shard")

    def killed(path, ignore_errors=False):
        (Path(path) / "__0_0.distcp").unlink()  # deleted one file, then the process died
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        io.remove_folder(folder)
    assert not folder.exists()
    assert [p.name.startswith(".step000002.ckpt.removed-") for p in tmp_path.iterdir()] == [True]
    monkeypatch.undo()
    io.remove_folder(next(tmp_path.iterdir()))
    assert not list(tmp_path.iterdir())
