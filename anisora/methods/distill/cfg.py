"""Guidance distillation: the student learns the teacher's classifier-free-guided output in one pass.

At a training level drawn by the backbone's objective the target is the teacher's output guided at a fixed scale
(`teacher_guidance`) where the teacher's own sampler guides (noise share >= `teacher_sampler.guidance_min_sigma`),
its conditional output elsewhere. The student then samples with the teacher's steps at guidance 1: one denoiser
pass per step instead of two.
"""

from __future__ import annotations

from typing import Any

import torch

from anisora.diffusion.loss_weights import weighted_mse
from anisora.methods.distill.common import DistillMethod


class CFGDistillMethod(DistillMethod):
    """Student and teacher roles; the student's sampler is the teacher's with `guidance_scale: 1`."""

    role_names = ("student", "teacher")
    needs_grid = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = self.prepare_batch(batch)
        uncond = inputs.unconditional(self.null_text(batch, inputs))
        objective = self.objective
        levels = torch.cat([objective.draw_levels(1, g) for g in inputs.generators])
        noise = inputs.per_sample_noise().float()
        x_t = objective.add_noise(inputs.x0.float(), noise, levels)
        target = self.teacher_output(x_t, levels, inputs.cond, uncond)
        pred = self.denoise_as("student", x_t, levels, self.with_text_gradients(inputs))
        loss = weighted_mse(pred, target, None)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(inputs))
        return loss * self.loss_scale()
