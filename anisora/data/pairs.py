"""Preference pairs from a file (rl_finetune.py's offline mode), in the layout of AniSora's RL pair data.

One JSON object per line (or one JSON list): `video_path` "winner,loser" (mp4, or .npy uint8 (F, H, W, 3) arrays,
relative to the file's folder), `caption`, `w_score`, `l_score` (AniSora scores on 0-100), optional `scale` (the
display upscale an mp4 was written with). AniSora stores VAE latents in `vae_path`; here the videos themselves
travel, so any backbone encodes them. Each video's own first frame is its guide, as in AniSora's RL code.
The stream is index-addressed (pair i of epoch e is entry i mod N), so it resumes exactly from a batch count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from anisora.config.errors import ConfigError
from anisora.data.datamodule import SyntheticDataModule, sample_seed
from anisora.data.synthetic import WorldConfig

KEY = "pairs"
REQUIRED = ("video_path", "caption", "w_score", "l_score")
VIDEO_SUFFIXES = (".mp4", ".npy")


@dataclass(frozen=True)
class PairEntry:
    winner: Path
    loser: Path
    caption: str
    winner_score: float
    loser_score: float
    scale: int = 1


def read_pairs(path: str | Path) -> list[PairEntry]:
    """Every entry of a pairs file, checked: a missing key, score or video fails in one line naming its line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(KEY, f"pairs file {path} does not exist")
    text = path.read_text()
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                       if x.strip()]
    except json.JSONDecodeError as ex:
        raise ConfigError(KEY, f"{path} is not JSON lines or a JSON list ({ex.msg}, line {ex.lineno})") from None
    if not rows:
        raise ConfigError(KEY, f"{path} holds no pairs")
    return [entry_of(row, path, n) for n, row in enumerate(rows, 1)]


def entry_of(row: Any, path: Path, line: int) -> PairEntry:
    where = f"{path} entry {line}"
    if not isinstance(row, dict):
        raise ConfigError(KEY, f"{where}: expected an object with {', '.join(REQUIRED)}")
    for key in REQUIRED:
        if row.get(key) is None:
            raise ConfigError(KEY, f"{where}: no {key!r} (expected {', '.join(REQUIRED)})")
    videos = [p.strip() for p in str(row["video_path"]).split(",")]
    if len(videos) != 2:
        raise ConfigError(KEY, f"{where}: video_path must name two videos, winner,loser; got {row['video_path']!r}")
    files = [(path.parent / v).resolve() for v in videos]
    for file in files:
        if file.suffix not in VIDEO_SUFFIXES:
            raise ConfigError(KEY, f"{where}: {file.name}: expected {' or '.join(VIDEO_SUFFIXES)}")
        if not file.is_file():
            raise ConfigError(KEY, f"{where}: video {file} does not exist")
    try:
        scores = float(row["w_score"]), float(row["l_score"])
    except (TypeError, ValueError):
        raise ConfigError(KEY, f"{where}: w_score and l_score must be numbers") from None
    return PairEntry(files[0], files[1], str(row["caption"]), *scores, scale=int(row.get("scale", 1)))


def read_frames(path: Path, scale: int = 1) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    from anisora.inference.video_io import read_video

    return read_video(path, downscale=scale)


def check_pair_size(entry: PairEntry, world: WorldConfig) -> None:
    """The videos are the model's clip size (frames, height, width), before any model is built."""
    want = (world.num_frames, world.height, world.width, 3)
    for file in (entry.winner, entry.loser):
        got = read_frames(file, entry.scale).shape
        if tuple(got) != want:
            raise ConfigError(KEY, f"{file}: {tuple(got)} frames, the model makes {want}")


def as_pixels(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


class PairStream(IterableDataset):
    """Pairs start, start+1, ... (cycling through the file)."""

    def __init__(self, entries: list[PairEntry], seed: int, start: int = 0) -> None:
        self.entries, self.seed, self.start = entries, seed, start

    def __iter__(self):
        index = self.start
        while True:
            e = self.entries[index % len(self.entries)]
            yield {"winner": as_pixels(read_frames(e.winner, e.scale)),
                   "loser": as_pixels(read_frames(e.loser, e.scale)), "caption": e.caption,
                   "w_score": e.winner_score, "l_score": e.loser_score,
                   "seed": sample_seed(self.seed, index), "index": index}
            index += 1


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in ("winner", "loser")}
    out |= {k: torch.tensor([float(it[k]) for it in items]) for k in ("w_score", "l_score")}
    out |= {k: [it[k] for it in items] for k in ("caption", "seed", "index")}
    return out


class PairsDataModule(SyntheticDataModule):
    """Batches of pairs; the data position (and its resume) as the synthetic stream's."""

    def __init__(self, entries: list[PairEntry], world: WorldConfig, seed: int, batch_size: int) -> None:
        super().__init__(world, seed, batch_size)
        self.entries = entries

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PairStream(self.entries, self.seed, self.samples_seen), batch_size=self.batch_size,
                          collate_fn=collate_pairs)

    def val_dataloader(self):
        return []
