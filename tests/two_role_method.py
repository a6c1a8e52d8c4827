"""A small non-SFT method for the tests: a student and a critic over one base, each with its own optimizer and
learning rate (manual optimization, the layout of distillation), plus the student's EMA."""

from __future__ import annotations

from typing import Any

import torch

from anisora.diffusion.loss_weights import weighted_mse
from anisora.methods.sft import SFTMethod


class TwoRoleMethod(SFTMethod):
    role_names = ("student", "critic")
    ema_follows = "student"

    def __init__(self, critic_lr: float = 2e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def optimizer_settings(self, role: str) -> dict[str, Any]:
        cfg = super().optimizer_settings(role)
        if role == "critic":
            cfg["lr"] = self.hparams.critic_lr
        return cfg

    def role_loss(self, role: str, inputs) -> torch.Tensor:
        with torch.no_grad():
            terms = self.denoising_inputs(inputs)
        with self.roles.use(role):
            pred = self.backbone.denoise(terms["noisy"], terms["timestep"], inputs.cond)
        return weighted_mse(pred.float(), terms["target"].float(), terms["weight"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        inputs = self.prepare_batch(batch)
        for role in ("critic", "student"):
            loss = self.role_loss(role, inputs)
            self.step_role(role, loss)
            self.log(f"train/{role}_loss", loss, batch_size=len(inputs))
