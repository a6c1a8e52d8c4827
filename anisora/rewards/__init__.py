"""Scorers by name (the `reward` config group): evaluate.py and rl_finetune.py build theirs here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anisora.config.errors import ConfigError
from anisora.config.schema import RewardConfig
from anisora.config.validate import check_node
from anisora.rewards.base import Clip, Scorer
from anisora.rewards.clips import clip_from_pair, clips_from_tensors, guided_frames


def _ground_truth(cfg: dict[str, Any]) -> Scorer:
    from anisora.rewards.ground_truth import GroundTruthScorer

    return GroundTruthScorer()


def _weighted(cfg: dict[str, Any]) -> Scorer:
    from anisora.rewards.weighted import WeightedScorer

    if "weighted" in cfg["scorers"]:
        raise ConfigError("reward.scorers", "a weighted scorer combines other scorers, not itself")
    return WeightedScorer([build_scorer({**cfg, "name": n}) for n in cfg["scorers"]], cfg["weights"])


def _weight_free(cfg: dict[str, Any]) -> Scorer:
    from anisora.rewards.weight_free import WeightFreeScorer

    static = cfg["static"]
    return WeightFreeScorer(cfg["flow_method"], static["frames"], static["pixel_delta"], static["min"])


def _vbench(cfg: dict[str, Any]) -> Scorer:
    from anisora.accelerators.devices import resolve_device
    from anisora.rewards.vbench import VBenchScorer

    return VBenchScorer(cfg["dino"], cfg["clip"], cfg["clip_large"], cfg["aesthetic_head"],
                        resolve_device(cfg["accelerator"]), cfg["batch_frames"])


def _learned(cfg: dict[str, Any]) -> Scorer:
    from anisora.accelerators.devices import resolve_device
    from anisora.rewards.learned import LearnedScorer

    return LearnedScorer(cfg["ckpt"], resolve_device(cfg["accelerator"]))


#: name -> builder from the reward config; each builder imports its own (possibly heavy) modules
BUILDERS: dict[str, Callable[[dict[str, Any]], Scorer]] = {
    "ground_truth": _ground_truth,
    "weighted": _weighted,
    "weight_free": _weight_free,
    "vbench": _vbench,
    "learned": _learned,
}


#: named sets of scorers for evaluate.py's `metrics=[...]`: the seed benchmark's two tables
METRIC_SETS: dict[str, tuple[str, ...]] = {
    "vbench_i2v": ("weight_free", "vbench"),  # VBench's I2V and quality dimensions (model-based ones need weights)
    "anime_reward": ("learned",),  # AnimeReward's dimensions from a trained reward model (reward.ckpt)
}


def scorer_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """`metrics=[...]` with its named sets expanded, each scorer once, in order; an unknown name fails in one line."""
    out: list[str] = []
    for name in names:
        if name not in BUILDERS and name not in METRIC_SETS:
            raise ConfigError("metrics", f"expected names among {', '.join([*BUILDERS, *METRIC_SETS])}; got {name!r}")
        out += [n for n in METRIC_SETS.get(name, (name,)) if n not in out]
    return out


def reward_config(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """`cfg` over the RewardConfig schema (its defaults filled in, unknown keys and bad values refused in one line)."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(RewardConfig), cfg)
    except OmegaConfBaseException as ex:
        raise ConfigError(f"reward.{getattr(ex, 'full_key', '') or ''}".rstrip("."), str(ex).splitlines()[0]) from None
    check_node(node, "reward")
    return OmegaConf.to_container(node, resolve=True)


def build_scorer(cfg: Mapping[str, Any] | DictConfig) -> Scorer:
    """The scorer a `reward` config names (`name`: one of BUILDERS), checked before any video is read."""
    settings = reward_config(cfg)
    if settings["name"] not in BUILDERS:
        raise ConfigError("reward.name", f"expected one of {', '.join(BUILDERS)}; got {settings['name']!r}")
    return BUILDERS[settings["name"]](settings)


__all__ = ["BUILDERS", "METRIC_SETS", "Clip", "Scorer", "build_scorer", "clip_from_pair", "clips_from_tensors",
           "guided_frames", "reward_config", "scorer_names"]
