"""train.py with method=reward_model: fit a learned reward model on a reward data file (anisora.data.reward_clips).

Shares train.py's trainer (devices, strategy, loggers, callbacks, atomic checkpoints) and run record; the model,
data, guide and sampler groups belong to diffusion methods and are not read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anisora.accelerators.devices import set_num_threads
from anisora.config.errors import ConfigError
from anisora.config.schema import RewardModelConfig
from anisora.config.validate import check_node
from anisora.data.reward_clips import (
    RewardData,
    RewardDataModule,
    RewardGroups,
    check_dimensions,
    read_reward_data,
    score_range,
    score_stats,
    split_groups,
)
from anisora.tasks.common import environment_defaults, find_checkpoint, write_run_record
from anisora.tasks.trainer import build_trainer

log = logging.getLogger("anisora.train")


def reward_model_settings(method_cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The method node over RewardModelConfig (defaults filled, unknown keys and bad values refused in one line)."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(RewardModelConfig), method_cfg)
    except OmegaConfBaseException as ex:
        raise ConfigError(f"method.{getattr(ex, 'full_key', '') or ''}".rstrip("."), str(ex).splitlines()[0]) from None
    check_node(node, "method")
    settings = OmegaConf.to_container(node, resolve=True)
    if not settings["dimensions"] or len(set(settings["dimensions"])) != len(settings["dimensions"]):
        raise ConfigError("method.dimensions", f"expected distinct dimension names; got {settings['dimensions']}")
    if not settings["train_data"]:
        raise ConfigError("method.train_data", "expected a reward data jsonl (clips with scores and/or pairs; "
                                               "benchmarks/reward_data.py writes one from the tiny world)")
    return settings


def reward_splits(settings: dict[str, Any], seed: int) -> tuple[RewardData, list[list[int]], RewardData,
                                                               list[list[int]]]:
    """(training data, its groups, held-out data, its groups): the val file, or a seeded share of the training
    file's groups; files, rows and the labels of every modelled dimension checked in one line each."""
    data = read_reward_data(settings["train_data"], "method.train_data")
    check_dimensions(data, settings["dimensions"], "method.dimensions")
    if settings["val_data"]:
        val = read_reward_data(settings["val_data"], "method.val_data")
        return data, data.groups(), val, val.groups()
    train_groups, val_groups = split_groups(data.groups(), settings["val_fraction"], seed)
    return data, train_groups, data, val_groups


def reward_datamodule(settings: dict[str, Any], net, splits, seed: int) -> RewardDataModule:
    data, train_groups, val_data, val_groups = splits
    options = dict(dimensions=settings["dimensions"], pixels=net.pixels, guide_pixels=net.guide_pixels,
                   score_mean=net.score_mean.tolist(), score_std=net.score_std.tolist(),
                   tie_margin=settings["tie_margin"])
    train = RewardGroups(data, train_groups, **options)
    val = RewardGroups(val_data, val_groups, **options) if val_groups else None
    return RewardDataModule(train, val, settings["batch_groups"], settings["num_workers"], seed)


def train_reward_model(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    from hydra.utils import get_class

    settings = reward_model_settings(cfg.method)
    splits = reward_splits(settings, cfg.seed)
    data, train_groups = splits[0], splits[1]
    train_data = RewardData([data.clips[i] for g in train_groups for i in g], [])
    mean, std = score_stats(train_data, settings["dimensions"])
    low, high = score_range(train_data, settings["dimensions"])
    resume = find_checkpoint(cfg.ckpt_path, Path(cfg.paths.log_dir), "ckpt_path", reward_model=True)
    environment_defaults()
    set_num_threads(cfg.accelerator.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    method = get_class(settings["_target_"])(settings, OmegaConf.to_container(cfg.optimizer, resolve=True),
                                              cfg.trainer.max_steps, score_mean=mean, score_std=std,
                                              score_min=low, score_max=high)
    datamodule = reward_datamodule(settings, method.net, splits, cfg.seed)
    write_run_record(cfg, run_dir)
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    log.info("reward model on %s towers, heads %s; %d training groups, %d held out; trainable parameters: %s; run "
             "folder: %s", method.net.towers.vision_type, ", ".join(method.dimensions), len(datamodule.train),
             len(datamodule.val or []), f"{trainable:,}", run_dir)
    trainer = build_trainer(cfg, run_dir, method, OmegaConf.to_container(cfg.strategy, resolve=True),
                            limit_val_batches=1.0)
    trainer.fit(method, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["global_step"] = float(trainer.global_step)
    log.info("finished at step %d: %s", trainer.global_step, metrics)
    return metrics
