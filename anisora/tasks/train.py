"""train.py: fit a method on a backbone, with exact resume and atomic checkpoints."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from anisora.accelerators.checkpoint_io import AtomicCheckpointIO
from anisora.accelerators.devices import (
    activation_dtype,
    check_attention_backend,
    resolve_device,
    set_attention_backend,
    set_num_threads,
    trainer_device_kwargs,
)
from anisora.accelerators.strategies import StrategySpec, block_types_of, check_ema
from anisora.backbones import latent_grid
from anisora.backbones.base import check_clip_shape
from anisora.backbones.checkpointing import apply_activation_checkpointing
from anisora.backbones.frozen_dtype import resolve_frozen_dtype
from anisora.config.errors import ConfigError
from anisora.data.datamodule import ShardDataModule, SyntheticDataModule
from anisora.data.shard_format import expand_urls
from anisora.data.shard_stream import check_shard_folders, check_slots
from anisora.data.synthetic import WorldConfig
from anisora.methods.sft import SFTMethod
from anisora.tasks.common import environment_defaults, find_checkpoint, run_task, write_run_record

log = logging.getLogger("anisora.train")
GROUPS = ["model", "data", "guide", "sampler", "accelerator", "strategy", "optimizer", "trainer", "callbacks", "logger",
          "paths"]


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
    """Sequence parallelism splits each sample over `degree` DDP ranks; fail fast on what cannot hold it."""
    if degree == 1:
        return 1
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    if strategy != "ddp" or count % degree:
        raise ConfigError("trainer.sequence_parallel", f"{degree} needs strategy=ddp over a multiple of {degree} "
                          f"devices; got strategy={strategy} with accelerator.devices={devices}")
    return degree


def check_shards_fit(datamodule: SyntheticDataModule, method: SFTMethod) -> None:
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


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    kind = cfg.logger.kind
    if kind == "none":
        return []
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, save_dir=str(run_dir),
                         name=f"{cfg.task_name}-{run_dir.name}", offline=cfg.logger.offline, log_model=False,
                         tags=list(cfg.tags))
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return [logger]


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
                        every_n_train_steps=cfg.callbacks.checkpoint_every_n_steps, save_top_k=1, save_last=True)
    ]
    if cfg.callbacks.lr_monitor and cfg.logger.kind != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.callbacks.progress_bar == "rich":
        callbacks.append(RichProgressBar())
    elif cfg.callbacks.progress_bar == "tqdm":
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return callbacks


@dataclass
class TrainingRun:
    """Everything `trainer.fit` needs, built and checked (benchmarks/train_throughput.py times exactly this)."""

    trainer: pl.Trainer
    method: SFTMethod
    datamodule: SyntheticDataModule
    resume: Path | None


def prepare_training(cfg: DictConfig, run_dir: Path, extra_callbacks: list[pl.Callback] | None = None
                     ) -> TrainingRun:
    """Check the config, data and devices, build the method and the Lightning trainer; nothing runs yet."""
    check_data(cfg)
    resume = find_checkpoint(cfg.ckpt_path, Path(cfg.paths.log_dir), "ckpt_path")
    datamodule = build_datamodule(cfg)  # checks shard paths before anything is written or built
    environment_defaults()
    acc = cfg.accelerator
    container = OmegaConf.to_container(cfg, resolve=True)
    strategy = container["strategy"]
    trainer_device_kwargs(acc.name, acc.devices, strategy, acc.precision)  # fails fast: devices, NPU stack, DeepSpeed
    check_ema(StrategySpec.of(strategy), cfg.optimizer.ema_decay)
    check_attention_backend(acc.attention_backend)
    set_num_threads(cfg.accelerator.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    sequence_parallel = check_sequence_parallel(cfg.trainer.sequence_parallel, strategy["name"], acc.devices)
    datamodule.sequence_parallel = sequence_parallel
    frozen = resolve_frozen_dtype(cfg.trainer.frozen_dtype, acc.precision, strategy["name"])
    method = SFTMethod(model=container["model"], guide=container["guide"], optimizer=container["optimizer"],
                       sampler=container["sampler"], max_steps=cfg.trainer.max_steps,
                       data=container["data"], sequence_parallel=sequence_parallel,
                       frozen_dtype=str(frozen).removeprefix("torch."))
    method.log_videos = cfg.logger.log_videos and cfg.callbacks.sample_videos
    check_shards_fit(datamodule, method)  # LoRA targets were checked while building: still nothing written
    attention = set_attention_backend(method.backbone.denoiser, acc.attention_backend, resolve_device(acc.name),
                                      activation_dtype(acc.precision))
    recomputed = apply_activation_checkpointing(method.backbone, cfg.trainer.activation_checkpointing,
                                                cfg.trainer.checkpoint_fraction)
    if rank_zero_only.rank == 0:  # DDP/FSDP/DeepSpeed ranks > 0 run this script again in the same folder
        write_run_record(cfg, run_dir)
    blocks = block_types_of(method.backbone.denoiser_blocks()) if strategy["name"] == "fsdp" else None
    device_kwargs = trainer_device_kwargs(acc.name, acc.devices, strategy, acc.precision, blocks)
    params = sum(p.numel() for p in method.backbone.denoiser.parameters())
    trainable = sum(p.numel() for m in method.backbone.trainable_modules() for p in m.parameters() if p.requires_grad)
    log.info("denoiser parameters: %s (trainable: %s); strategy: %s; activation checkpointing: %d blocks; "
             "attention: %s; run folder: %s", f"{params:,}", f"{trainable:,}", strategy["name"], len(recomputed),
             attention or "default", run_dir)

    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        **{k: v for k, v in device_kwargs.items() if k != "plugins"},
        max_steps=cfg.trainer.max_steps,
        val_check_interval=cfg.trainer.val_every_n_steps * cfg.trainer.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=sequence_parallel == 1,  # a sequence-parallel group validates the same clips
        limit_val_batches=1 if cfg.callbacks.sample_videos else 0,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        deterministic=cfg.trainer.deterministic,
        logger=build_loggers(cfg, run_dir) or False,
        callbacks=[*build_callbacks(cfg, run_dir), *(extra_callbacks or [])],
        plugins=[*device_kwargs["plugins"], AtomicCheckpointIO()],
        enable_progress_bar=cfg.callbacks.progress_bar != "none",
        enable_model_summary=False,
    )
    return TrainingRun(trainer, method, datamodule, resume)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    run = prepare_training(cfg, run_dir)
    trainer, resume = run.trainer, run.resume
    trainer.fit(run.method, datamodule=run.datamodule, ckpt_path=str(resume) if resume else None)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["global_step"] = float(trainer.global_step)
    log.info("finished at step %d: %s", trainer.global_step, metrics)
    return metrics


def run(cfg: DictConfig) -> float | None:
    """Entry point of train.py; returns train/loss for Hydra sweepers."""
    metrics = run_task(cfg, GROUPS, train)
    return metrics.get("train/loss")
