"""The Lightning trainer every training task shares (train.py, rl_finetune.py, the reward model's training):
devices and strategy from the accelerator and strategy groups, atomic checkpoints, and loggers and callbacks from
their `_target_` configs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from anisora.accelerators.checkpoint_io import AtomicCheckpointIO
from anisora.accelerators.devices import trainer_device_kwargs
from anisora.accelerators.strategies import block_types_of
from anisora.methods.base import DiffusionMethod
from anisora.tracking.wandb_run import run_identity


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The logger group's `_target_` config (kind none: no logger); W&B also receives the resolved config."""
    node = cfg.logger.get("instance")
    if cfg.logger.kind == "none" or node is None:
        return []
    name = node.get("name") or f"{cfg.task_name}-{run_dir.name}"
    identity = run_identity(cfg) if cfg.logger.kind == "wandb" else {}  # group: the preset; job_type: the task
    logger = instantiate(node, save_dir=str(run_dir), name=name, **identity)
    if cfg.logger.kind == "wandb":
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return [logger]


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    """Every `_target_` config under `callbacks.instances` (null entries are switched off), then the progress bar.
    The checkpoint callback writes into this run's `checkpoints/`."""
    callbacks: list[pl.Callback] = []
    for name, node in (cfg.callbacks.get("instances") or {}).items():
        if node is None or (name == "lr_monitor" and (not cfg.callbacks.lr_monitor or cfg.logger.kind == "none")):
            continue
        extra = {"dirpath": str(run_dir / "checkpoints")} if name == "checkpoint" else {}
        callbacks.append(instantiate(node, **extra))
    if cfg.callbacks.progress_bar == "rich":
        callbacks.append(RichProgressBar())
    elif cfg.callbacks.progress_bar == "tqdm":
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return callbacks


def fsdp_units(method: DiffusionMethod) -> set[type[torch.nn.Module]]:
    """FSDP's wrapping units: each transformer block, and each whole denoiser, so that every role copy (an EMA, a
    critic) is sharded exactly like the denoiser it mirrors and their local shards pair up element by element."""
    return block_types_of(method.backbone.denoiser_blocks()) | {type(method.backbone.denoiser)}


def build_trainer(cfg: DictConfig, run_dir: Path, method: DiffusionMethod, strategy: dict,
                  extra_callbacks: list[pl.Callback] | None = None, **overrides) -> pl.Trainer:
    """The Lightning trainer every training task shares (train.py, rl_finetune.py): devices and strategy from the
    accelerator and strategy groups, atomic checkpoints, loggers and callbacks from their `_target_` configs."""
    acc = cfg.accelerator
    blocks = fsdp_units(method) if strategy["name"] == "fsdp" else None
    if strategy["name"] == "ddp" and len(method.trainable_roles()) > 1:  # each backward reaches one role's weights
        strategy = {**strategy, "find_unused_parameters": True}
    device_kwargs = trainer_device_kwargs(acc.name, acc.devices, strategy, acc.precision, blocks, acc.num_nodes)
    sequence_parallel = int(method.hparams.get("sequence_parallel", 1))
    method.gradient_clip_val = cfg.trainer.gradient_clip_val  # manual optimization clips in step_role
    options = dict(
        default_root_dir=str(run_dir),
        **{k: v for k, v in device_kwargs.items() if k != "plugins"},
        max_steps=cfg.trainer.max_steps,
        val_check_interval=cfg.trainer.val_every_n_steps * cfg.trainer.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=sequence_parallel == 1,  # a sequence-parallel group validates the same clips
        limit_val_batches=1 if cfg.callbacks.sample_videos else 0,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val if method.automatic_optimization else None,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        deterministic=cfg.trainer.deterministic,
        logger=build_loggers(cfg, run_dir) or False,
        callbacks=[*build_callbacks(cfg, run_dir), *(extra_callbacks or [])],
        plugins=[*device_kwargs["plugins"], AtomicCheckpointIO()],
        enable_progress_bar=cfg.callbacks.progress_bar != "none",
        enable_model_summary=False,
    )
    options.update(overrides)
    return pl.Trainer(**options)
