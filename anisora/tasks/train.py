"""train.py: fit a method on a backbone, with exact resume and atomic checkpoints."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import get_class
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from anisora.accelerators.devices import (
    activation_dtype,
    check_attention_backend,
    resolve_device,
    set_attention_backend,
    set_num_threads,
    trainer_device_kwargs,
)
from anisora.accelerators.strategies import StrategySpec, check_ema
from anisora.backbones import check_model_config, latent_grid
from anisora.backbones.base import check_clip_shape
from anisora.backbones.checkpointing import apply_activation_checkpointing
from anisora.backbones.frozen_dtype import resolve_frozen_dtype
from anisora.config.errors import ConfigError
from anisora.data.datamodule import ShardDataModule, SyntheticDataModule
from anisora.data.shard_format import expand_urls
from anisora.data.shard_stream import check_shard_folders, check_slots
from anisora.data.synthetic import WorldConfig
from anisora.diffusion.sampling import SamplerSpec
from anisora.diffusion.schedules import check_sampler
from anisora.methods.base import DiffusionMethod
from anisora.tasks.common import environment_defaults, find_checkpoint, run_task, write_run_record
from anisora.tasks.trainer import build_trainer
from anisora.tracking.sweeps import run_trial

log = logging.getLogger("anisora.train")
GROUPS = ["method", "model", "data", "guide", "sampler", "accelerator", "strategy", "optimizer", "trainer", "callbacks",
          "logger", "paths"]


def world_of(data: DictConfig) -> WorldConfig:
    return WorldConfig(num_frames=data.num_frames, height=data.height, width=data.width,
                       sprite_size=data.sprite_size, slowest_speed=data.slowest_speed)


def check_data(cfg: DictConfig) -> None:
    temporal, spatial, patch = latent_grid(OmegaConf.to_container(cfg.model))
    check_clip_shape(cfg.data.num_frames, cfg.data.height, cfg.data.width, temporal, spatial, patch, "data")


def build_datamodule(cfg: DictConfig) -> SyntheticDataModule:
    """The configured data; shard paths are checked here, before any model is built."""
    data, accumulate = cfg.data, cfg.trainer.accumulate_grad_batches
    if data.kind == "synthetic":
        return SyntheticDataModule(world_of(data), data.seed, data.batch_size, data.num_workers, data.val_clips,
                                   accumulate)
    shards = expand_urls(OmegaConf.to_container(data, resolve=True)["urls"])
    check_shard_folders(shards)
    check_slots(len(shards), 1, data.num_workers)  # again with the real world size once the trainer runs
    return ShardDataModule(shards, world_of(data), data.seed, data.batch_size, data.num_workers, data.val_clips,
                           accumulate, data.shuffle_buffer, data.shuffle_shards, data.max_corrupt)


def check_sequence_parallel(degree: int, strategy: str, devices) -> int:
    """Sequence parallelism splits each sample over `degree` DDP ranks of one node (`devices` counts a node's
    devices, so every group stays inside a node); fail fast on what cannot hold it."""
    if degree == 1:
        return 1
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    if strategy != "ddp" or count % degree:
        raise ConfigError("trainer.sequence_parallel", f"{degree} needs strategy=ddp over a multiple of {degree} "
                          f"devices; got strategy={strategy} with accelerator.devices={devices}")
    return degree


def check_shards_fit(datamodule: SyntheticDataModule, method: DiffusionMethod) -> None:
    """Shards encoded by another model family or latent layout fail here in one line, not inside the DiT."""
    if not isinstance(datamodule, ShardDataModule):
        return
    info_path = Path(datamodule.shards[0]).parent / "dataset.json"
    if not info_path.is_file():
        return
    info = json.loads(info_path.read_text())
    channels = int(info["latent_shape"][0])
    if channels != method.backbone.latent_channels:
        raise ConfigError("data.urls", f"shards in {info_path.parent} hold {channels}-channel latents (model "
                          f"{info.get('model', {}).get('kind', '?')}); this model uses "
                          f"{method.backbone.latent_channels}: encode them with this model")


def target_class(target: str | None, key: str, base: type) -> type:
    """The class a `_target_` names, a subclass of `base`; anything else fails in one line naming `key`."""
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError(key, f"cannot import {target!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(key, f"{target} is not a {base.__name__}")
    return cls


def method_class(method_cfg: DictConfig) -> type[DiffusionMethod]:
    """The LightningModule named by `method._target_`; an unknown option of it fails in one line."""
    cls = target_class(method_cfg.get("_target_"), "method._target_", DiffusionMethod)
    accepted = {n for c in cls.__mro__ if c is not object for n in inspect.signature(c.__init__).parameters}
    for key in method_cfg:
        if key != "_target_" and key not in accepted:
            raise ConfigError(f"method.{key}", f"{cls.__name__} has no such option")
    return cls


def build_method(cfg: DictConfig, sequence_parallel: int, frozen_dtype: torch.dtype) -> DiffusionMethod:
    """The configured method over the configured backbone, from plain dicts (they become its hyper-parameters)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    cls = method_class(cfg.method)
    options = {k: v for k, v in container["method"].items() if k != "_target_"}
    return cls(model=container["model"], guide=container["guide"], optimizer=container["optimizer"],
               sampler=container["sampler"], max_steps=cfg.trainer.max_steps, data=container["data"],
               sequence_parallel=sequence_parallel, frozen_dtype=str(frozen_dtype).removeprefix("torch."), **options)


@dataclass
class TrainingRun:
    """Everything `trainer.fit` needs, built and checked (benchmarks/train_throughput.py times exactly this)."""

    trainer: pl.Trainer
    method: DiffusionMethod
    datamodule: SyntheticDataModule
    resume: Path | None


def check_training(cfg: DictConfig) -> tuple[dict, int, torch.dtype]:
    """Every check that needs no model: clip shape, model weights and size, devices, strategy, EMA, attention,
    sequence parallel, frozen dtype. Returns the strategy config, the sequence-parallel degree and frozen dtype."""
    check_data(cfg)
    acc = cfg.accelerator
    check_model_config(OmegaConf.to_container(cfg.model, resolve=True), acc.name, acc.precision)
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
    trainer_device_kwargs(acc.name, acc.devices, strategy, acc.precision,  # fails fast: devices, nodes, launch,
                          num_nodes=acc.num_nodes)  # NPU stack, DeepSpeed
    check_ema(StrategySpec.of(strategy), cfg.optimizer.ema_decay)
    check_attention_backend(acc.attention_backend)
    check_sampler(SamplerSpec(**OmegaConf.to_container(cfg.sampler, resolve=True)))
    method_class(cfg.method).check_config(cfg)
    sequence_parallel = check_sequence_parallel(cfg.trainer.sequence_parallel, strategy["name"], acc.devices)
    frozen = resolve_frozen_dtype(cfg.trainer.frozen_dtype, acc.precision, strategy["name"])
    return strategy, sequence_parallel, frozen


def prepare_training(cfg: DictConfig, run_dir: Path, extra_callbacks: list[pl.Callback] | None = None
                     ) -> TrainingRun:
    """Check the config, data and devices, build the method and the Lightning trainer; nothing runs yet."""
    strategy, sequence_parallel, frozen = check_training(cfg)
    resume = find_checkpoint(cfg.ckpt_path, Path(cfg.paths.log_dir), "ckpt_path")
    datamodule = build_datamodule(cfg)  # checks shard paths before anything is written or built
    environment_defaults()
    set_num_threads(cfg.accelerator.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule.sequence_parallel = sequence_parallel
    method = build_method(cfg, sequence_parallel, frozen)
    method.log_videos = cfg.logger.log_videos and cfg.callbacks.sample_videos
    check_shards_fit(datamodule, method)  # LoRA targets were checked while building: still nothing written
    acc = cfg.accelerator
    for denoiser in method.roles.denoisers():  # role copies (a critic, an EMA) run like the base
        attention = set_attention_backend(denoiser, acc.attention_backend, resolve_device(acc.name),
                                          activation_dtype(acc.precision))
        recomputed = apply_activation_checkpointing(method.backbone, cfg.trainer.activation_checkpointing,
                                                    cfg.trainer.checkpoint_fraction, denoiser)
    if rank_zero_only.rank == 0:  # DDP/FSDP/DeepSpeed ranks > 0 run this script again in the same folder
        write_run_record(cfg, run_dir)
    params = sum(p.numel() for p in method.parameters())
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    log.info("%s with roles %s; parameters: %s (trainable: %s); strategy: %s; activation checkpointing: %d blocks; "
             "attention: %s; run folder: %s", type(method).__name__, ", ".join(method.roles.specs), f"{params:,}",
             f"{trainable:,}", strategy["name"], len(recomputed), attention or "default", run_dir)
    trainer = build_trainer(cfg, run_dir, method, strategy, extra_callbacks)
    return TrainingRun(trainer, method, datamodule, resume)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    from anisora.methods.reward_model import is_reward_model
    from anisora.tasks.train_reward import train_reward_model

    if is_reward_model(cfg.method):  # a reward model trains on scored clips, not a diffusion backbone
        return train_reward_model(cfg, run_dir)
    run = prepare_training(cfg, run_dir)
    trainer, resume = run.trainer, run.resume
    trainer.fit(run.method, datamodule=run.datamodule, ckpt_path=str(resume) if resume else None)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["global_step"] = float(trainer.global_step)
    log.info("finished at step %d: %s", trainer.global_step, metrics)
    return metrics


def run(cfg: DictConfig) -> float:
    """Entry point of train.py; returns `optimized_metric` for Hydra sweepers (a failed trial raises TrialFailed)."""
    return run_trial(lambda: run_task(cfg, GROUPS, train), cfg.optimized_metric)
