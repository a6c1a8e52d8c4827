"""Reward-model data: a JSON-lines file of scored clips and, optionally, labelled pairs (method=reward_model).

Clip rows: `video` (mp4, or a .npy uint8 (F, H, W, 3) array; relative to the file's folder), `prompt`, optional
`guide` (an image file or .npy (H, W, 3): the I2V input), `group` (clips made from one prompt and guide), `id`,
`label` (the action label of the benchmark), `scale` (an mp4's display upscale) and `scores` {dimension: value}.
Pair rows (VideoReward's layout): `pair` [id_a, id_b] and `preferred` {dimension: "a" | "b" | "same"}.

Training items are groups: the clips of one `group` (joined with every clip a pair row links to them). Inside a
group every two clips scored on a dimension also give a pair (a tie when the scores differ by at most
`tie_margin`), so a scored file trains the pairwise heads too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from anisora.config.errors import ConfigError
from anisora.data.pairs import read_frames

VIDEO_SUFFIXES = (".mp4", ".npy")
PREFERRED = {"a": 0, "b": 1, "same": 2}


@dataclass
class RewardClip:
    video: Path
    prompt: str = ""
    guide: Path | None = None
    group: str = ""
    label: str | None = None
    scale: int = 1
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class RewardData:
    clips: list[RewardClip]
    pairs: list[tuple[int, int, str, int]]  # (clip a, clip b, dimension, PREFERRED value)

    def groups(self) -> list[list[int]]:
        """Clip indices per group: one `group` value, joined through pair rows (union-find)."""
        parent = list(range(len(self.clips)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        first: dict[str, int] = {}
        for i, clip in enumerate(self.clips):
            if clip.group:
                parent[root(i)] = root(first.setdefault(clip.group, i))
        for a, b, _, _ in self.pairs:
            parent[root(a)] = root(b)
        out: dict[int, list[int]] = {}
        for i in range(len(self.clips)):
            out.setdefault(root(i), []).append(i)
        return list(out.values())


def read_reward_data(path: str | Path, key: str) -> RewardData:
    """Every row of a reward data file, checked: a missing video, a bad score or pair fails in one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(key, f"reward data file {path} does not exist")
    clips, ids, pair_rows = [], {}, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as ex:
            raise ConfigError(key, f"{where}: not JSON ({ex.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(key, f"{where}: expected an object with video and scores, or pair and preferred")
        if "pair" in row:
            pair_rows.append((where, row))
            continue
        clips.append(clip_of(row, path.parent, where, key))
        if row.get("id") is not None:
            ids[str(row["id"])] = len(clips) - 1
    if not clips:
        raise ConfigError(key, f"{path} holds no clips")
    pairs = []
    for where, row in pair_rows:
        members = row.get("pair")
        if not isinstance(members, list) or len(members) != 2 or any(str(m) not in ids for m in members):
            raise ConfigError(key, f"{where}: pair must name two clip ids of the file; got {members!r}")
        for dim, value in (row.get("preferred") or {}).items():
            if value not in PREFERRED:
                raise ConfigError(key, f"{where}: preferred.{dim} must be one of a, b, same; got {value!r}")
            pairs.append((ids[str(members[0])], ids[str(members[1])], str(dim), PREFERRED[value]))
    return RewardData(clips, pairs)


def clip_of(row: dict[str, Any], folder: Path, where: str, key: str) -> RewardClip:
    if row.get("video") is None:
        raise ConfigError(key, f"{where}: no 'video'")
    video = (folder / str(row["video"])).resolve()
    if video.suffix not in VIDEO_SUFFIXES or not video.is_file():
        raise ConfigError(key, f"{where}: video {video} is not an existing {' or '.join(VIDEO_SUFFIXES)} file")
    guide = None
    if row.get("guide"):
        guide = (folder / str(row["guide"])).resolve()
        if not guide.is_file():
            raise ConfigError(key, f"{where}: guide {guide} does not exist")
    scores = row.get("scores") or {}
    try:
        scores = {str(k): float("nan") if v is None else float(v) for k, v in scores.items()}
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(key, f"{where}: scores must map dimensions to numbers") from None
    return RewardClip(video, str(row.get("prompt") or ""), guide, str(row.get("group") or ""), row.get("label"),
                      int(row.get("scale", 1)), scores)


def check_dimensions(data: RewardData, dimensions: Sequence[str], key: str) -> None:
    """Every modelled dimension has labels (scores or pairs) in the data."""
    labelled = {d for c in data.clips for d, v in c.scores.items() if math.isfinite(v)} | {p[2] for p in data.pairs}
    missing = [d for d in dimensions if d not in labelled]
    if missing:
        raise ConfigError(key, f"no scores or pairs for {', '.join(missing)}; the data labels "
                               f"{', '.join(sorted(labelled)) or 'nothing'}")


def finite_scores(data: RewardData, dimension: str) -> np.ndarray:
    """The clips' scores of one dimension, unscored clips left out."""
    return np.array([c.scores[dimension] for c in data.clips if math.isfinite(c.scores.get(dimension, math.nan))])


def score_stats(data: RewardData, dimensions: Sequence[str]) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each dimension's scores (1 where constant or unscored)."""
    means, stds = [], []
    for d in dimensions:
        values = finite_scores(data, d)
        means.append(float(values.mean()) if len(values) else 0.0)
        std = float(values.std()) if len(values) > 1 else 0.0
        stds.append(std if std > 1e-8 else 1.0)
    return means, stds


def score_range(data: RewardData, dimensions: Sequence[str]) -> tuple[list[float], list[float]]:
    """The lowest and highest score of each dimension (-inf and inf where unscored)."""
    lows, highs = [], []
    for d in dimensions:
        values = finite_scores(data, d)
        lows.append(float(values.min()) if len(values) else -math.inf)
        highs.append(float(values.max()) if len(values) else math.inf)
    return lows, highs


def read_guide(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    from anisora.inference.video_io import read_image

    return read_image(path)


class RewardGroups(Dataset):
    """Group g -> its clips' pixels, prompts, guides, standardised scores and pairs (indices inside the group)."""

    def __init__(self, data: RewardData, groups: list[list[int]], dimensions: Sequence[str],
                 pixels: Callable[[np.ndarray], torch.Tensor],
                 guide_pixels: Callable[[np.ndarray | None], tuple[torch.Tensor, bool]],
                 score_mean: Sequence[float], score_std: Sequence[float], tie_margin: float) -> None:
        self.data, self.groups, self.dimensions = data, groups, list(dimensions)
        self.pixels, self.guide_pixels = pixels, guide_pixels
        self.mean, self.std = np.asarray(score_mean), np.asarray(score_std)
        self.tie_margin = tie_margin

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        members = self.groups[index]
        clips = [self.data.clips[i] for i in members]
        raw = np.array([[c.scores.get(d, math.nan) for d in self.dimensions] for c in clips], dtype=np.float64)
        guides = [self.guide_pixels(read_guide(c.guide) if c.guide else None) for c in clips]
        pairs = group_pairs(raw, self.tie_margin)
        local = {m: i for i, m in enumerate(members)}
        for a, b, dim, value in self.data.pairs:
            if a in local and dim in self.dimensions:
                winner, loser = (local[a], local[b]) if value != 1 else (local[b], local[a])
                pairs.append((winner, loser, self.dimensions.index(dim), value == 2))
        return group_item(torch.stack([self.pixels(read_frames(c.video, c.scale)) for c in clips]),
                          [c.prompt for c in clips], guides, raw, (raw - self.mean) / self.std, pairs,
                          [c.label for c in clips])


def group_item(pixels: torch.Tensor, prompts: list[str], guides: list[tuple[torch.Tensor, bool]], raw: np.ndarray,
               standardised: np.ndarray, pairs: list[tuple[int, int, int, bool]], labels: list[str | None]
               ) -> dict[str, Any]:
    """One group as `collate_groups` takes it: clips' pixels, prompts, guides (pixels, present), scores in their
    own units and standardised, and the pairs inside the group (winner, loser, dimension, tie)."""
    return {"pixels": pixels, "prompts": prompts, "guide": torch.stack([g for g, _ in guides]),
            "has_guide": torch.tensor([h for _, h in guides]),
            "scores": torch.from_numpy(np.asarray(standardised)).float(),
            "raw_scores": torch.from_numpy(np.asarray(raw)).float(), "pairs": pairs, "labels": labels}


def group_pairs(scores: np.ndarray, tie_margin: float) -> list[tuple[int, int, int, bool]]:
    """(winner, loser, dimension, tie) for every two clips of a group scored on a dimension."""
    out = []
    count, dims = scores.shape
    for d in range(dims):
        for i in range(count):
            for j in range(i + 1, count):
                si, sj = scores[i, d], scores[j, d]
                if not (math.isfinite(si) and math.isfinite(sj)):
                    continue
                tie = abs(si - sj) <= tie_margin
                out.append((i, j, d, True) if tie else ((i, j, d, False) if si > sj else (j, i, d, False)))
    return out


def collate_groups(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Groups -> one batch of clips; pair indices shifted to the batch."""
    out: dict[str, Any] = {k: torch.cat([it[k] for it in items]) for k in ("pixels", "guide", "has_guide", "scores",
                                                                           "raw_scores")}
    out["prompts"] = [p for it in items for p in it["prompts"]]
    out["labels"] = [x for it in items for x in it["labels"]]
    rows, offset = [], 0
    for it in items:
        rows += [(w + offset, lo + offset, d, float(t)) for w, lo, d, t in it["pairs"]]
        offset += len(it["prompts"])
    table = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
    out["pairs"] = table[:, :3].long()
    out["ties"] = table[:, 3].bool()
    return out


def split_groups(groups: list[list[int]], fraction: float, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """A seeded hold-out of whole groups (at least one, when there are two or more)."""
    order = np.random.default_rng(seed).permutation(len(groups))
    held = max(1, round(fraction * len(groups))) if len(groups) > 1 and fraction > 0 else 0
    return [groups[i] for i in order[held:]], [groups[i] for i in order[:held]]


class RewardDataModule(pl.LightningDataModule):
    """Shuffled (seeded) training groups and the held-out groups, `batch_groups` groups per batch."""

    def __init__(self, train: RewardGroups, val: RewardGroups | None, batch_groups: int, num_workers: int,
                 seed: int) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_groups, self.num_workers, self.seed = batch_groups, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_groups, shuffle=True, collate_fn=collate_groups,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed),
                          drop_last=len(self.train) > self.batch_groups)

    def val_dataloader(self):
        if self.val is None or not len(self.val):
            return []
        return DataLoader(self.val, batch_size=self.batch_groups, collate_fn=collate_groups,
                          num_workers=self.num_workers)
