"""Lightning data: the synthetic world's endless, index-addressed stream of fresh clips, or encoded shards.

Clip i of the synthetic stream is a pure function of (seed, i), and each clip carries its own sample
seed, so a run resumed from a checkpoint sees exactly the clips, noise and guide draws it would have
seen without the interruption. The shard stream (anisora.data.shard_stream) is deterministic in the
same way and resumes by replaying the batches a checkpoint says were consumed.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from anisora.config.errors import ConfigError
from anisora.data.shard_stream import ERROR_KEY, ShardStream, check_slots
from anisora.data.synthetic import SyntheticClip, WorldConfig, make_clip


def sample_seed(seed: int, index: int) -> int:
    """A per-sample seed for noise, timestep and guide draws."""
    return int(np.random.SeedSequence([seed, 7, index]).generate_state(1)[0])


def clip_to_item(clip: SyntheticClip, index: int, seed: int) -> dict[str, Any]:
    video = torch.from_numpy(clip.video).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    return {"video": video, "caption": clip.caption, "seed": sample_seed(seed, index), "index": index}


class SyntheticClipStream(IterableDataset):
    """Clips start, start+1, ... of this rank's share: under data parallelism rank r of R takes clips r, r+R, ...,
    so ranks see different clips and one rank alone (R = 1) sees the stream as it always was."""

    def __init__(self, world: WorldConfig, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 truth: bool = False) -> None:
        self.world, self.seed, self.start = world, seed, start
        self.rank, self.world_size = rank, world_size
        self.truth = truth  # also yield each clip's ground truth (RL rollouts are scored against it)

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        local = self.start + wid
        while True:
            index = local * self.world_size + self.rank
            clip = make_clip(self.world, self.seed, "train", index)
            item = clip_to_item(clip, index, self.seed)
            if self.truth:
                item["truth"] = clip.truth.to_json()
            yield item
            local += nworkers


class ClipList(Dataset):
    """A fixed list of clips of one split (validation and benchmarks)."""

    def __init__(self, world: WorldConfig, seed: int, split: str, count: int) -> None:
        self.clips = [make_clip(world, seed, split, i) for i in range(count)]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = clip_to_item(self.clips[i], i, self.seed)
        item["truth"] = self.clips[i].truth.to_json()
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"video": torch.stack([it["video"] for it in items])}
    for key in items[0]:
        if key != "video":
            out[key] = [it[key] for it in items]
    return out


class SyntheticDataModule(pl.LightningDataModule):
    def __init__(self, world: WorldConfig, seed: int, batch_size: int, num_workers: int = 0,
                 val_clips: int = 4, accumulate_grad_batches: int = 1, truth: bool = False) -> None:
        super().__init__()
        self.world, self.seed, self.truth = world, seed, truth
        self.batch_size, self.num_workers, self.val_clips = batch_size, num_workers, val_clips
        self.accumulate = accumulate_grad_batches
        self.samples_seen = 0
        self.sequence_parallel = 1  # ranks of one sequence-parallel group read the same data

    def data_rank(self) -> tuple[int, int]:
        """(rank, world) of this process among the data-parallel readers: the ranks of a sequence-parallel
        group share one reader slot, since they split the same samples."""
        if self.trainer is None:
            return 0, 1
        sp = self.sequence_parallel
        return self.trainer.global_rank // sp, max(1, self.trainer.world_size // sp)

    def train_dataloader(self) -> DataLoader:
        start = self.samples_seen
        rank, world = self.data_rank()
        return DataLoader(SyntheticClipStream(self.world, self.seed, start, rank, world, self.truth),
                          batch_size=self.batch_size,
                          num_workers=self.num_workers, collate_fn=collate, persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ClipList(self.world, self.seed, "val", self.val_clips), batch_size=self.val_clips,
                          collate_fn=collate)

    def batches_consumed(self) -> int:
        """Training batches this rank has consumed: the method's count, or `accumulate` per optimizer step for a
        module that keeps none."""
        if self.trainer is None:
            return 0
        counted = getattr(self.trainer.lightning_module, "batches_seen", None)
        return int(counted) if counted is not None else self.trainer.global_step * self.accumulate

    def state_dict(self) -> dict[str, Any]:
        """The data position (of each rank's share)."""
        return {"samples_seen": self.batches_consumed() * self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples_seen = int(state.get("samples_seen", 0))


class ShardDataModule(SyntheticDataModule):
    """Training batches from `anisora-data encode` shards; validation clips from the synthetic world at the
    configured clip size (a fixed probe of what the model generates)."""

    def __init__(self, shards: list[str], world: WorldConfig, seed: int, batch_size: int, num_workers: int = 0,
                 val_clips: int = 4, accumulate_grad_batches: int = 1, shuffle_buffer: int = 0,
                 shuffle_shards: bool = True, max_corrupt: int = 0) -> None:
        super().__init__(world, seed, batch_size, num_workers, val_clips, accumulate_grad_batches)
        self.shards, self.shuffle_buffer, self.shuffle_shards = shards, shuffle_buffer, shuffle_shards
        self.max_corrupt = max_corrupt
        self.batches_seen = 0
        self.corrupt_seen: dict[int, int] = {}

    def stream(self, start_batch: int = 0, epochs: int | None = None) -> ShardStream:
        rank, world = self.data_rank()
        check_slots(len(self.shards), world, self.num_workers)
        return ShardStream(self.shards, self.batch_size, self.seed, rank, world, self.shuffle_buffer,
                           self.shuffle_shards, self.max_corrupt, start_batch, epochs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.stream(self.batches_seen), batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Data errors found in a worker stop training here, in the main process, as one line."""
        if isinstance(batch, dict) and ERROR_KEY in batch:
            message = batch[ERROR_KEY]
            key, _, text = message.partition(": ")
            raise ConfigError(key, text)
        if isinstance(batch, dict) and "corrupt" in batch:
            self.corrupt_seen[int(batch["worker"])] = int(batch["corrupt"])
        return batch

    @property
    def corrupt_skipped(self) -> int:
        return sum(self.corrupt_seen.values())

    def state_dict(self) -> dict[str, Any]:
        """The data position in this rank's stream."""
        batches = self.batches_consumed()
        return {"batches_seen": batches, "samples_seen": batches * self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_seen = int(state.get("batches_seen", 0))
