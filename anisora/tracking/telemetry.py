"""What a researcher reads off a training run besides its losses: learning rate and gradient norm per role,
samples and tokens per second, MFU and peak memory on accelerators."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from anisora.accelerators.devices import peak_memory_gib, reset_peak_memory


def tokens_per_sample(model: dict[str, Any], data: dict[str, Any]) -> int:
    """Transformer tokens of one clip: latent frames x latent height x latent width in patches."""
    from anisora.backbones import latent_grid

    temporal, spatial, patch = latent_grid(model)
    side = spatial * patch
    frames = (int(data["num_frames"]) - 1) // temporal + 1
    return frames * (int(data["height"]) // side) * (int(data["width"]) // side)


def model_flops_per_token(trainable_params: int, frozen_params: int) -> float:
    """Training FLOPs per token by the field's convention: 6 per trainable weight (forward, both backward matmuls)
    and 4 per frozen weight (forward and the input-gradient matmul); attention's quadratic term is left out."""
    return 6.0 * trainable_params + 4.0 * frozen_params


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float, devices: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' dense bf16 peak."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * devices)


def gradient_norm(params: list[torch.nn.Parameter]) -> float:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


class TrainingTelemetry(pl.Callback):
    """Logs `lr/<role>`, `grad_norm/<role>` (before clipping), `perf/samples_per_s`, `perf/tokens_per_s`, and on
    accelerators `perf/peak_memory_gib` and, when `peak_tflops` (dense bf16 per device) is given, `perf/mfu`."""

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self.started: float | None = None
        self.grad_norms: dict[str, float] = {}

    def role_of(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> str:
        roles = pl_module.trainable_roles() if hasattr(pl_module, "trainable_roles") else []
        index = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)
        return roles[index] if index < len(roles) else f"opt{index}"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.started = time.perf_counter()
        if batch_idx == 0:
            reset_peak_memory(pl_module.device)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        role = self.role_of(trainer, pl_module, optimizer)
        self.grad_norms[f"grad_norm/{role}"] = gradient_norm(params)
        self.grad_norms[f"lr/{role}"] = float(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.started is None or not trainer.loggers or trainer.global_step % trainer.log_every_n_steps:
            return
        seconds = max(time.perf_counter() - self.started, 1e-9)
        samples = batch_size_of(batch) * trainer.world_size
        metrics = dict(self.grad_norms) | {"perf/samples_per_s": samples / seconds, "perf/step_s": seconds}
        hp = pl_module.hparams
        if "model" in hp and "data" in hp:
            tokens = samples * tokens_per_sample(dict(hp["model"]), dict(hp["data"]))
            metrics["perf/tokens_per_s"] = tokens / seconds
            if self.peak_tflops:
                weights = list(denoiser_of(pl_module).parameters())
                trainable = sum(p.numel() for p in weights if p.requires_grad)
                frozen = sum(p.numel() for p in weights if not p.requires_grad)
                metrics["perf/mfu"] = mfu(tokens / seconds, model_flops_per_token(trainable, frozen),
                                          self.peak_tflops, trainer.world_size)
        if pl_module.device.type != "cpu":
            metrics["perf/peak_memory_gib"] = peak_memory_gib(pl_module.device)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)


def batch_size_of(batch: Any) -> int:
    """Clips in a batch (the first tensor's or list's length)."""
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, (torch.Tensor, list, tuple)):
                return len(value)
    return len(batch) if isinstance(batch, (list, tuple)) else 1


def denoiser_of(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The transformer whose FLOPs MFU counts (encoders and VAE left out); the whole module if it has none."""
    backbone = getattr(pl_module, "backbone", None)
    return getattr(backbone, "denoiser", None) or pl_module
