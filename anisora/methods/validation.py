"""Sampling at validation: guided by each validation clip's first frame and caption."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from anisora.diffusion.sampling import SamplerSpec
from anisora.evaluation.metrics import aggregate, score_clip
from anisora.guidance.pair import pair_from_video
from anisora.inference.pipeline import generate, to_uint8_frames
from anisora.inference.video_io import display_scale, write_mp4


def validation_clips(method: pl.LightningModule, batch: dict[str, Any], spec: SamplerSpec | None = None,
                     role: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Sample the validation clips (first frame + caption) as `role` (the method's sampling role) with `spec`
    (the method's sampler) -> (generated, real) uint8 frames and their scores against the ground truth."""
    video = batch["video"]
    pairs = [pair_from_video(v.cpu(), [0]) for v in video]
    guide, mask = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    weights = method.sampling_weights() if role is None else method.roles.use(role)
    with weights, method.encoders_on_device():
        frames = generate(method.backbone, list(batch["caption"]), guide, mask, seeds=list(range(len(video))),
                          spec=spec or method.sampler_spec)
    real = to_uint8_frames(video)
    scores = [score_clip(f"val{i}", frames[i], real[i, 0], batch["truth"][i]) for i in range(len(frames))]
    metrics = aggregate(scores)
    metrics["motion"] = motion_measure(metrics)
    return frames, real, metrics


def motion_measure(metrics: dict[str, float]) -> float:
    """How much a batch of videos moves: the mean tracked sprite speed (px/frame) where the synthetic world's truth
    is known, else a weight-free frame-difference score (mean |frame[t+1] - frame[t]| / 255, i.e. 1 - flicker)."""
    speed = metrics.get("speed_pred_mean", math.nan)
    return float(speed) if not math.isnan(speed) else 1.0 - float(metrics["temporal_flickering"])


def validate_samples(method: pl.LightningModule, batch: dict[str, Any]) -> dict[str, float]:
    """Generate, score against the clips' ground truth, log `val/*` and the videos; returns the scores."""
    frames, real, metrics = validation_clips(method, batch)
    bs = len(frames)
    for key in ("direction_accuracy", "speed_error", "first_frame_psnr", "temporal_flickering", "motion"):
        if key in metrics:
            method.log(f"val/{key}", float(metrics[key]), batch_size=bs)
    trainer = method.trainer
    if trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
        return metrics
    folder = Path(trainer.default_root_dir) / "samples"
    scale = display_scale(*real.shape[2:4])
    paths = [write_mp4(folder / f"step{trainer.global_step:06d}_val{i}.mp4", np.concatenate([real[i], frames[i]], 2),
                       scale=scale) for i in range(min(bs, 4))]
    log_videos(trainer, paths, [batch["caption"][i] for i in range(len(paths))])
    return metrics


def log_videos(trainer: pl.Trainer, paths: list[Path], captions: list[str]) -> None:
    """Sample videos go to W&B as mp4 files (no moviepy needed)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.lightning_module.log_videos:
            import wandb

            from anisora.tracking.wandb_run import video_table

            rows = [{"step": trainer.global_step, "caption": c, "video": str(p)} for p, c in zip(paths, captions)]
            logger.experiment.log({"val/samples": [wandb.Video(str(p), caption=c, format="mp4")
                                                   for p, c in zip(paths, captions)],
                                   "val/sample_table": video_table(rows),
                                   "trainer/global_step": trainer.global_step})
