"""Training objectives as objects: what a denoiser predicts, how training noise is drawn and added, and how a
model output converts to a clean-sample estimate.

A backbone adapter holds its objective (`backbone.objective`); methods, the sampler core and speed-ups ask it and
never branch on its name. A noise *level* is a per-sample tensor in the objective's own units: the flow-matching
sigma in (0, 1), or the DDPM step index of v-prediction. `noise_std(level)` puts both on one scale (the share of
noise in x_t, 0 = clean, 1 = pure noise) for rules that must hold for either (CFG intervals, loss windows).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from anisora.config.errors import ConfigError
from anisora.diffusion.flow_matching import NUM_TRAIN_TIMESTEPS, sample_sigmas
from anisora.diffusion.v_prediction import DEFAULT_SCHEDULE, VSchedule, alphas_cumprod
from anisora.diffusion.v_prediction import SAMPLERS as V_SAMPLERS


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) in `like`'s dtype and device, to broadcast over a latent."""
    return values.to(like.device).view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class Objective(ABC):
    """Noising, target and conversions of one diffusion formulation."""

    #: the name configs use (`model.objective.name`)
    name: str = ""
    #: how CFG batches its two branches by default: [uncond, cond] (the CogVideoX pipelines) or [cond, uncond]
    cfg_uncond_first: bool = False
    #: the samplers (`sampler.name`) that integrate this objective's model output
    samplers: tuple[str, ...] = ()

    @abstractmethod
    def draw_levels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Training noise levels for `batch` samples from `generator` (CPU)."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """x_level from clean latents and unit Gaussian noise."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output at `level`."""

    @abstractmethod
    def model_timestep(self, level: torch.Tensor) -> torch.Tensor:
        """The denoiser's timestep input for `level`."""

    @abstractmethod
    def noise_std(self, level: torch.Tensor) -> torch.Tensor:
        """Share of noise in x_level on one scale for every objective: 0 clean, 1 pure noise."""

    @abstractmethod
    def x0_from_output(self, x_t: torch.Tensor, output: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The clean latent a model output implies."""

    @abstractmethod
    def output_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The model output that implies clean latent `x0` at x_t (inverse of `x0_from_output`)."""

    def noise_from_output(self, x_t: torch.Tensor, output: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The noise a model output implies (x_t = add_noise(x0, noise, level) solved for noise)."""
        x0 = self.x0_from_output(x_t, output, level)
        return self.noise_from_x0(x_t, x0, level)

    @abstractmethod
    def noise_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The noise that, added to `x0` at `level`, gives x_t."""

    def loss_weight(self, level: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weight of the MSE on `target`; None = uniform (both built-in objectives)."""
        return None

    def level_of_std(self, std: float) -> torch.Tensor:
        """The level whose noise share is closest to `std` (windows on the training levels)."""
        raise NotImplementedError


class FlowMatching(Objective):
    """Rectified flow: x_s = (1 - s) x0 + s noise, the model predicts the velocity noise - x0 (Wan2.1).

    Levels are sigmas in (0, 1), drawn uniform or logit-normal and then time-shifted (`shift`), and the DiT takes
    1000 sigma as its timestep, as diffusers' flow schedulers pass it."""

    name = "flow_match"
    samplers = ("euler", "unipc", "flow_sde", "euler_renoise")

    def __init__(self, shift: float = 3.0, timestep_sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0) -> None:
        self.shift = float(shift)
        self.timestep_sampling = str(timestep_sampling)
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    def draw_levels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return sample_sigmas(batch, self.shift, generator, self.timestep_sampling, self.logit_mean, self.logit_std)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        s = _per_sample(level, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def model_timestep(self, level: torch.Tensor) -> torch.Tensor:
        return level * NUM_TRAIN_TIMESTEPS

    def noise_std(self, level: torch.Tensor) -> torch.Tensor:
        return level.float()

    def x0_from_output(self, x_t: torch.Tensor, output: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return x_t - _per_sample(level, output) * output

    def output_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        s = _per_sample(level, x0)
        return (x_t - x0) / s.clamp_min(1e-8)

    def noise_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        s = _per_sample(level, x0)
        return (x_t - (1 - s) * x0) / s.clamp_min(1e-8)

    def level_of_std(self, std: float) -> torch.Tensor:
        return torch.tensor([float(std)])


class VPrediction(Objective):
    """v-prediction on a DDPM schedule (CogVideoX, AniSora V1): x_t = a x0 + s noise with a = sqrt(abar_t),
    s = sqrt(1 - abar_t); the model predicts v = a noise - s x0, so x0 = a x_t - s v.

    Levels are integer step indices t in [0, N) drawn uniformly, and the DiT takes t itself. Plain MSE on v is
    the x0 loss weighted by 1 / (1 - abar_t) that AniSora V1 trains with (index-anisora-code.md section 1.3)."""

    name = "v_pred"
    cfg_uncond_first = True
    samplers = V_SAMPLERS

    def __init__(self, schedule: VSchedule = DEFAULT_SCHEDULE, timestep_sampling: str = "uniform") -> None:
        if timestep_sampling != "uniform":
            raise ConfigError("model.objective.timestep_sampling",
                              f"v_pred draws uniform steps, got {timestep_sampling!r}")
        self.schedule = schedule
        self.abar = alphas_cumprod(schedule)

    def _coefficients(self, level: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.abar[level.detach().cpu().long()]
        return _per_sample(abar.sqrt(), like), _per_sample((1 - abar).sqrt(), like)

    def draw_levels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.schedule.num_train_timesteps, (batch,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(level, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(level, x0)
        return a * noise - s * x0

    def model_timestep(self, level: torch.Tensor) -> torch.Tensor:
        return level.long()

    def noise_std(self, level: torch.Tensor) -> torch.Tensor:
        return (1 - self.abar[level.detach().cpu().long()]).sqrt().float()

    def x0_from_output(self, x_t: torch.Tensor, output: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(level, output)
        return a * x_t - s * output

    def output_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(level, x0)
        return (a * x_t - x0) / s.clamp_min(1e-8)

    def noise_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(level, x0)
        return (x_t - a * x0) / s.clamp_min(1e-8)

    def level_of_std(self, std: float) -> torch.Tensor:
        stds = (1 - self.abar).sqrt()
        return (stds - float(std)).abs().argmin().view(1)


OBJECTIVES: dict[str, type[Objective]] = {"flow_match": FlowMatching, "v_pred": VPrediction}


def build_objective(cfg: dict[str, Any] | None, schedule: VSchedule | None = None) -> Objective:
    """The objective of a model config's `objective` block (`schedule`: a v-prediction model's own DDPM schedule)."""
    cfg = dict(cfg or {"name": "flow_match"})
    name = cfg.pop("name", "flow_match")
    if name not in OBJECTIVES:
        raise ConfigError("model.objective.name", f"expected one of {', '.join(OBJECTIVES)}, got {name!r}")
    for key in ("motion_weight", "guide_weight"):  # loss weights of the method, kept beside the objective in configs
        cfg.pop(key, None)
    if name == "v_pred":
        return VPrediction(schedule or DEFAULT_SCHEDULE, **cfg)
    return FlowMatching(**cfg)
