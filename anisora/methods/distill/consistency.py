"""Phased consistency distillation, as AniSora V2 ships it (index-anisora-code.md section 2.5).

The student's grid (the sampler's sigma list, 1 > s_1 > ... > s_{K-1} > 0) splits the noise range into K phases.
A fine Euler grid of `euler_steps` shifted levels (plus the phase edges) serves the teacher. For data x0 at a
random fine level s_i: the student jumps to the end of s_i's phase, x_end = x_i + (s_end - s_i) v_student; the
teacher (with CFG) takes one Euler step to the next fine level s_prev, and the target is that point jumped to the
same phase end by the target network (the EMA when there is one, else the student, without gradients), or the
point itself when s_prev is the phase end. Loss: pseudo-Huber, mean(sqrt((x_end - target)^2 + c^2) - c).
Sampling is deterministic Euler on the phase edges (`sampler=few_step_4`).

The optional hinge-GAN term (AniSora's distill_adv, weight 0.1) is not part of this method: `adv_weight` must
stay 0 (its discriminator heads read the teacher's features at a hard-coded 720p token grid).
"""

from __future__ import annotations

from typing import Any

import torch

from anisora.config.errors import ConfigError
from anisora.diffusion.flow_matching import shift_sigmas
from anisora.methods.distill.common import DistillMethod


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """mean(sqrt((a - b)^2 + c^2) - c): L2 near zero, L1 far away."""
    return (((a.float() - b.float()) ** 2 + c * c).sqrt() - c).mean()


class ConsistencyMethod(DistillMethod):
    """Student and teacher roles (and the student's EMA as the target network)."""

    role_names = ("student", "teacher")

    def __init__(self, *args: Any, euler_steps: int = 50, euler_shift: float = 5.0, huber_c: float = 1e-3,
                 adv_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(euler_steps) < len(self.grid):
            raise ConfigError("method.euler_steps", f"expected >= the student's {len(self.grid)} steps, "
                              f"got {euler_steps}")
        if float(adv_weight) != 0.0:
            raise ConfigError("method.adv_weight", "the hinge-GAN term is not available; expected 0")
        u = torch.linspace(1.0, 0.0, int(euler_steps) + 1)
        fine = set(round(float(s), 6) for s in shift_sigmas(u, float(euler_shift))) | set(self.grid) | {0.0}
        self.fine = sorted(fine, reverse=True)  # 1 ... 0, phase edges included
        self.edges = list(self.grid) + [0.0]
        self.huber_c = float(huber_c)

    def phase_end(self, sigma: float) -> float:
        """The largest phase edge below `sigma`."""
        return max(e for e in self.edges if e < sigma)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = self.prepare_batch(batch)
        uncond = inputs.unconditional(self.null_text(batch, inputs))
        x0, noise = inputs.x0.float(), inputs.per_sample_noise().float()
        index = torch.cat([torch.randint(len(self.fine) - 1, (1,), generator=g) for g in inputs.generators])
        sigma = torch.tensor([self.fine[int(i)] for i in index])
        prev = torch.tensor([self.fine[int(i) + 1] for i in index])
        end = torch.tensor([self.phase_end(float(s)) for s in sigma])
        x_t = self.objective.add_noise(x0, noise, sigma)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        per = lambda v: v.view(shape).to(x_t)  # noqa: E731 - per-sample broadcast
        velocity = self.denoise_as("student", x_t, sigma, self.with_text_gradients(inputs))
        student = x_t + (per(end) - per(sigma)) * velocity
        with torch.no_grad():
            x_prev = x_t + (per(prev) - per(sigma)) * self.teacher_output(x_t, sigma, inputs.cond, uncond)
            target_role = "ema" if "ema" in self.roles else "student"
            jump = self.denoise_as(target_role, x_prev, prev.clamp_min(1e-6), inputs.cond)
            at_edge = per((prev - end).abs() < 1e-9)
            target = torch.where(at_edge.bool().expand_as(x_prev), x_prev, x_prev + (per(end) - per(prev)) * jump)
        loss = pseudo_huber(student, target, self.huber_c)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(inputs))
        return loss * self.loss_scale()
