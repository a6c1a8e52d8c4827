"""DMD2 distribution-matching distillation, as the Wan anchors run it (next-batch.md section 1.1).

Roles: the student (trainable), the critic or fake score (trainable, the flow-matching loss on the student's
samples) and the teacher or real score (frozen, with CFG). With `roles_mode=lora_shared_base` (the default) the
student and critic are LoRA adapters over one frozen base and the teacher is that base with adapters off.

Per batch: the student's clean estimate x0 at a random step of its grid (backward simulation from pure noise, or
noised data with `student_inputs=data`); every `student_every`-th batch the student steps on the DMD loss

    x_t = (1 - t) x0 + t eps,   t ~ U then shifted (score_shift) and clamped to score_window
    g = (critic_x0(x_t) - teacher_x0_cfg(x_t)) / mean_{C,T,H,W} |x0 - teacher_x0_cfg(x_t)|   (per sample)
    L_student = 0.5 || x0 - stopgrad(x0 - g) ||^2

and the critic steps every batch on the denoising loss of the (detached) student sample at a fresh t and eps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from anisora.config.errors import ConfigError
from anisora.diffusion.flow_matching import shift_sigmas
from anisora.methods.base import TrainBatch
from anisora.methods.distill.common import DistillMethod

STUDENT_INPUTS = ("simulate", "data")


def dmd_gradient(x0: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The distribution-matching direction in x0: fake minus real score (as clean estimates), divided per sample
    by the mean |x0 - real| (DMD eq. 8's normaliser); NaN-free."""
    norm = (x0 - real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clamp_min(1e-8)
    return torch.nan_to_num((fake - real) / norm)


def dmd_loss(x0: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """0.5 ||x0 - stopgrad(x0 - g)||^2 (mean): its gradient in x0 is g / numel, so descent follows -g."""
    return 0.5 * F.mse_loss(x0.float(), (x0 - gradient).detach().float())


class DMDMethod(DistillMethod):
    """Student, critic and teacher roles; manual optimisation with one optimizer per trainable role."""

    role_names = ("student", "critic", "teacher")

    def __init__(self, *args: Any, student_every: int = 5, student_inputs: str = "simulate",
                 score_shift: float = 5.0, score_window: tuple[float, float] = (0.02, 0.98), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(student_every) < 1:
            raise ConfigError("method.student_every", f"expected >= 1 critic updates per student update, "
                              f"got {student_every}")
        if student_inputs not in STUDENT_INPUTS:
            raise ConfigError("method.student_inputs", f"expected one of {', '.join(STUDENT_INPUTS)}, "
                              f"got {student_inputs!r}")
        low, high = (float(v) for v in score_window)
        if not 0.0 < low < high < 1.0:
            raise ConfigError("method.score_window", f"expected 0 < low < high < 1, got {list(score_window)}")
        self.automatic_optimization = False
        self.student_every, self.student_inputs = int(student_every), student_inputs
        self.score_shift, self.score_window = float(score_shift), (low, high)
        self.updates = {"student": 0, "critic": 0}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["role_updates"] = dict(self.updates)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.updates = dict(checkpoint.get("role_updates", self.updates))

    def score_levels(self, inputs: TrainBatch) -> torch.Tensor:
        """Per-sample score timesteps: uniform, shifted, clamped to the window (each sample's own generator)."""
        u = torch.cat([torch.rand(1, generator=g) for g in inputs.generators])
        return shift_sigmas(u, self.score_shift).clamp(*self.score_window)

    def student_sample(self, inputs: TrainBatch, grad: bool) -> torch.Tensor:
        """The student's x0 at a random step of its grid (one draw per batch, from the first sample's generator)."""
        index = int(torch.randint(len(self.grid), (1,), generator=inputs.generators[0]))
        start = None
        if self.student_inputs == "data":
            level = torch.full((len(inputs),), self.grid[index])
            start = self.objective.add_noise(inputs.x0.float(), inputs.per_sample_noise().float(), level)
        return self.student_x0(inputs, index, grad, start)

    def dmd_loss(self, x0: torch.Tensor, inputs: TrainBatch, uncond) -> tuple[torch.Tensor, dict[str, float]]:
        """The distribution-matching loss whose gradient in x0 is the normalised score difference."""
        objective = self.objective
        levels = self.score_levels(inputs)
        noise = inputs.per_sample_noise().float()
        with torch.no_grad():
            x_t = objective.add_noise(x0.detach(), noise, levels)
            fake = objective.x0_from_output(x_t, self.denoise_as("critic", x_t, levels, inputs.cond), levels)
            real = objective.x0_from_output(x_t, self.teacher_output(x_t, levels, inputs.cond, uncond), levels)
            gradient = dmd_gradient(x0.detach(), fake, real)
        loss = dmd_loss(x0, gradient)
        return loss, {"dmd_grad_norm": float(gradient.norm() / gradient.numel() ** 0.5)}

    def critic_loss(self, x0: torch.Tensor, inputs: TrainBatch) -> torch.Tensor:
        """Flow-matching loss of the critic on the student's (detached) samples at a fresh level and noise."""
        objective = self.objective
        levels = self.score_levels(inputs)
        noise = inputs.per_sample_noise().float()
        x_t = objective.add_noise(x0, noise, levels)
        pred = self.denoise_as("critic", x_t, levels, inputs.cond)
        return F.mse_loss(pred, objective.target(x0, noise, levels))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        inputs = self.prepare_batch(batch)
        uncond = inputs.unconditional(self.null_text(batch, inputs))
        student_turn = (self.batches_seen - 1) % self.student_every == 0
        x0 = self.student_sample(inputs, grad=student_turn)
        bs = len(inputs)
        if student_turn:
            loss, extra = self.dmd_loss(x0, inputs, uncond)
            self.step_role("student", loss)
            self.updates["student"] += 1
            self.log("train/student_loss", loss.detach(), prog_bar=True, batch_size=bs)
            self.log("train/dmd_grad", extra["dmd_grad_norm"], batch_size=bs)
        critic = self.critic_loss(x0.detach(), inputs)
        self.step_role("critic", critic)
        self.updates["critic"] += 1
        self.log("train/critic_loss", critic.detach(), prog_bar=True, batch_size=bs)
        self.log("train/student_updates", float(self.updates["student"]), batch_size=bs)
