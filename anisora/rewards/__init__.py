"""Scorers by name (the `reward` config group): evaluate.py and rl_finetune.py build theirs here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anisora.config.errors import ConfigError
from anisora.rewards.base import Clip, Scorer
from anisora.rewards.clips import clip_from_pair, clips_from_tensors, guided_frames


def _ground_truth(cfg: Mapping[str, Any]) -> Scorer:
    from anisora.rewards.ground_truth import GroundTruthScorer

    return GroundTruthScorer()


def _weighted(cfg: Mapping[str, Any]) -> Scorer:
    from anisora.rewards.weighted import WeightedScorer

    names = list(cfg.get("scorers") or [])
    if "weighted" in names:
        raise ConfigError("reward.scorers", "a weighted scorer combines other scorers, not itself")
    return WeightedScorer([build_scorer({**cfg, "name": n}) for n in names], cfg.get("weights") or {})


#: name -> builder from the reward config; each builder imports its own (possibly heavy) modules
BUILDERS: dict[str, Callable[[Mapping[str, Any]], Scorer]] = {
    "ground_truth": _ground_truth,
    "weighted": _weighted,
}


def build_scorer(cfg: Mapping[str, Any] | DictConfig) -> Scorer:
    """The scorer a `reward` config names (`name`: one of BUILDERS), checked before any video is read."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    name = cfg.get("name")
    if name not in BUILDERS:
        raise ConfigError("reward.name", f"expected one of {', '.join(BUILDERS)}; got {name!r}")
    return BUILDERS[name](cfg)


__all__ = ["BUILDERS", "Clip", "Scorer", "build_scorer", "clip_from_pair", "clips_from_tensors", "guided_frames"]
