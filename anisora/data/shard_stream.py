"""Training batches from encoded shards: split by rank and worker, seeded shuffle, one latent shape per batch.

The stream is a pure function of (shards, seed, rank, world size, worker count, batch size): pass e over
the data visits the shards in a seeded order, data slot s = rank * workers + worker reads every
(ranks * workers)-th of them, a seeded shuffle buffer mixes samples across shards, and samples wait in
per-shape buckets until a batch of one shape is full. DataLoader workers hand out batches round-robin,
so "k batches consumed" fixes how many each worker made; a resumed stream replays and drops those
(decoding them again: resume costs a re-read of the data consumed so far in each worker's stream).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from anisora.config.errors import ConfigError
from anisora.data.shard_format import (
    GUIDE_PREFIX,
    IMAGE_PREFIX,
    NO_GUIDE,
    NULL_TEXT,
    decode_sample,
    load_tensor,
    read_tar,
)

log = logging.getLogger("anisora.data")
ERROR_KEY = "error"  # a batch carrying only this key reports a data error from a worker to the main process


def check_shard_folders(shards: list[str], key: str = "data.urls") -> None:
    """Each folder of shards holds the dataset-wide tensors `anisora-data encode` writes beside them."""
    for folder in sorted({str(Path(s).parent) for s in shards}):
        for name in (NULL_TEXT, f"{GUIDE_PREFIX}{NO_GUIDE}.pth"):
            if not (Path(folder) / name).is_file():
                raise ConfigError(key, f"{Path(folder) / name} is missing: shards need the folder "
                                  "anisora-data encode wrote (null_text.pth, guide_none.pth, dataset.json)")


def check_slots(num_shards: int, world_size: int, num_workers: int) -> None:
    slots = world_size * max(num_workers, 1)
    if num_shards < slots:
        raise ConfigError("data.urls", f"{num_shards} shards for {world_size} ranks x {max(num_workers, 1)} "
                          f"data workers: every worker needs a shard; use more shards or fewer data.num_workers")


def sample_seed(seed: int, rank: int, position: int) -> int:
    """Seed of the sample at `position` of a rank's batch stream (noise, timestep, guide and text draws)."""
    return int(np.random.SeedSequence([seed, 11, rank, position]).generate_state(1)[0])


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples of one shape -> a batch: stacked tensors, per-mode conditioning dicts, lists for the rest."""
    first = samples[0]
    batch: dict[str, Any] = {
        "latents": torch.stack([s["latents"] for s in samples]),
        "null_text": torch.stack([s["null_text"] for s in samples]),
        "guides": {m: torch.stack([s["guides"][m] for s in samples]) for m in first["guides"]},
        "images": {m: torch.stack([s["images"][m] for s in samples]) for m in first["images"]},
        "caption": [s["meta"].get("caption", "") for s in samples],
        "key": [s["key"] for s in samples],
        "shard": [s["shard"] for s in samples],
    }
    if first["text"] is not None:
        batch["text"] = torch.stack([s["text"] for s in samples])
    return batch


def bucket_key(sample: dict[str, Any]) -> tuple:
    return (tuple(sample["latents"].shape), tuple(sample["guides"]), tuple(sample["images"]),
            sample["text"] is None)


class ShardStream(IterableDataset):
    """Endless (or `epochs`-long) batches of one rank; `start_batch` batches are skipped for exact resume."""

    def __init__(self, shards: list[str], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 0, shuffle_shards: bool = True, max_corrupt: int = 0, start_batch: int = 0,
                 epochs: int | None = None) -> None:
        self.shards, self.batch_size, self.seed = list(shards), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.shuffle_shards = shuffle_buffer, shuffle_shards
        self.max_corrupt, self.start_batch, self.epochs = max_corrupt, start_batch, epochs
        self._folder_parts: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ which shards
    def shard_order(self, epoch: int) -> list[str]:
        if not self.shuffle_shards:
            return list(self.shards)
        perm = np.random.default_rng([self.seed, 3, epoch]).permutation(len(self.shards))
        return [self.shards[i] for i in perm]

    def worker_shards(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        slots = self.world_size * num_workers
        return self.shard_order(epoch)[self.rank * num_workers + worker :: slots]

    # ------------------------------------------------------------------ samples
    def _folder(self, shard: str) -> dict[str, Any]:
        """Dataset-wide tensors beside a shard: the null text and the no-guide conditioning."""
        folder = str(Path(shard).parent)
        if folder not in self._folder_parts:
            base = Path(folder)
            image = base / f"{IMAGE_PREFIX}{NO_GUIDE}.pth"
            self._folder_parts[folder] = {
                "null_text": load_tensor((base / NULL_TEXT).read_bytes()),
                "guide": load_tensor((base / f"{GUIDE_PREFIX}{NO_GUIDE}.pth").read_bytes()),
                "image": load_tensor(image.read_bytes()) if image.is_file() else None,
            }
        return self._folder_parts[folder]

    def samples(self, worker: int, num_workers: int, corrupt: list[int]) -> Iterator[dict[str, Any]]:
        """Decoded samples of this worker's shards, pass after pass; unreadable ones are counted in corrupt[0]
        and skipped, and past the budget a ConfigError message is yielded instead of a sample."""
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            for shard in self.worker_shards(epoch, worker, num_workers):
                parts = self._folder(shard)
                key = "(start)"
                try:
                    for key, fields in read_tar(shard):
                        try:
                            sample = decode_sample(fields)
                        except Exception as ex:  # any undecodable member: torch, pickle, json, shape
                            yield from self._corrupt(corrupt, shard, key, ex)
                            continue
                        sample["guides"][NO_GUIDE] = parts["guide"]
                        if parts["image"] is not None:
                            sample["images"][NO_GUIDE] = parts["image"]
                        sample.update(null_text=parts["null_text"], key=key, shard=shard)
                        yield sample
                except (tarfile.TarError, OSError, EOFError) as ex:  # a damaged tar: the rest of it is lost
                    yield from self._corrupt(corrupt, shard, f"after {key}", ex)
            epoch += 1

    def _corrupt(self, corrupt: list[int], shard: str, key: str, ex: BaseException) -> Iterator[dict[str, Any]]:
        corrupt[0] += 1
        reason = f"{type(ex).__name__}: {(str(ex).strip().splitlines() or [''])[0]}"[:160]
        log.warning("skipped unreadable sample %s in %s (%d of data.max_corrupt=%d): %s", key, shard, corrupt[0],
                    self.max_corrupt, reason)
        if corrupt[0] > self.max_corrupt:
            yield {ERROR_KEY: f"data.max_corrupt: {corrupt[0]} unreadable samples exceed the budget of "
                              f"{self.max_corrupt}; the last: sample {key} of shard {shard} ({reason})"}

    def shuffled(self, samples: Iterator[dict[str, Any]], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """A seeded shuffle buffer: each new sample replaces a random held one, which is emitted."""
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if ERROR_KEY in sample:
                yield sample
                continue
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            if not buffer:
                yield sample
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], sample = sample, buffer[i]
            yield sample
        order = rng.permutation(len(buffer)) if buffer else []
        yield from (buffer[i] for i in order)

    def batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """Batches of one latent shape (and one set of stored fields), with per-sample seeds."""
        corrupt = [0]
        rng = np.random.default_rng([self.seed, 5, self.rank, worker, num_workers, self.world_size])
        buckets: dict[tuple, list[dict[str, Any]]] = {}
        made = 0

        def emit(samples: list[dict[str, Any]]) -> dict[str, Any]:
            nonlocal made
            batch = collate_samples(samples)
            position = (made * num_workers + worker) * self.batch_size
            batch["seed"] = [sample_seed(self.seed, self.rank, position + i) for i in range(len(samples))]
            batch["corrupt"], batch["worker"] = corrupt[0], worker  # unreadable samples this worker skipped so far
            made += 1
            return batch

        for sample in self.shuffled(self.samples(worker, num_workers, corrupt), rng):
            if ERROR_KEY in sample:
                yield sample
                return
            bucket = buckets.setdefault(bucket_key(sample), [])
            bucket.append(sample)
            if len(bucket) == self.batch_size:
                yield emit(bucket)
                bucket.clear()
        for bucket in buckets.values():  # only a finite stream ends: the last, partial batches
            if bucket:
                yield emit(bucket)

    def skipped_batches(self, worker: int, num_workers: int) -> int:
        """Of the first `start_batch` batches (handed out round-robin), how many this worker made."""
        return max(0, (self.start_batch - worker + num_workers - 1) // num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        loader_worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # A resumed DataLoader asks worker 0 first, but batch `start_batch` is due from worker start_batch % N:
        # loader worker w plays that role and the ones after it in turn.
        worker = (loader_worker + self.start_batch) % num_workers
        skip = self.skipped_batches(worker, num_workers)
        for n, batch in enumerate(self.batches(worker, num_workers)):
            if n >= skip or ERROR_KEY in batch:
                yield batch
