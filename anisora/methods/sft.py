"""Supervised fine-tuning (and training from scratch) with the backbone's own objective.

Flow matching for Wan (velocity target), v-prediction for CogVideoX / AniSora V1 (v target on its DDPM schedule):
the objective object draws the noise level, noises the latents and names the target; the method only adds
AniSora's optional loss weights (more weight on what moves, and on given keyframes).
"""

from __future__ import annotations

from typing import Any

import torch

from anisora.diffusion.loss_weights import (
    combine_weights,
    guide_loss_weight,
    motion_loss_weight,
    per_sample_weight,
    weighted_mse,
)
from anisora.methods.base import DiffusionMethod, TrainBatch


class SFTMethod(DiffusionMethod):
    """Denoising loss of the student role (a LoRA adapter or the whole denoiser), EMA optional."""

    role_names = ("student",)
    ema_follows = "student"

    def denoising_inputs(self, inputs: TrainBatch) -> dict[str, torch.Tensor]:
        """Noise level and noise per sample (from each sample's generator, after its guide draws) -> x_t, the
        model timestep, the target and the loss weight."""
        objective = self.objective
        levels = torch.cat([objective.draw_levels(1, g) for g in inputs.generators])
        noise = inputs.per_sample_noise()
        x0 = inputs.x0
        weight = combine_weights(motion_loss_weight(x0, self.motion_weight, self.backbone.residual_latents),
                                 guide_loss_weight(inputs.slots, self.guide_weight))
        level_weight = objective.loss_weight(levels)
        return {"noisy": objective.add_noise(x0, noise, levels),
                "timestep": objective.model_timestep(levels).to(self.device),
                "target": objective.target(x0, noise, levels),
                "weight": per_sample_weight(weight, None if level_weight is None else level_weight.to(x0))}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = self.prepare_batch(batch)
        with torch.no_grad():
            terms = self.denoising_inputs(inputs)
        pred = self.backbone.denoise(terms["noisy"], terms["timestep"], self.with_text_gradients(inputs))
        loss = weighted_mse(pred.float(), terms["target"].float(), terms["weight"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(inputs))
        return loss * self.loss_scale()
