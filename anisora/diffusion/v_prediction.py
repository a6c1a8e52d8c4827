"""v-prediction on a zero-terminal-SNR DDPM schedule (CogVideoX, AniSora V1): training targets and sampling.

Forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; the model predicts
v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0, so x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v. The DiT takes the
integer step index t in [0, 1000) as its timestep. MSE on v equals the x0 loss weighted by 1 / (1 - abar_t) that
AniSora V1 trains with.

The sampler core (anisora.diffusion.sampling, its VPredictionStepper) follows diffusers'
CogVideoXImageToVideoPipeline step for step with the schedulers built here, so for one clip it gives the stock
pipeline's latents for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from anisora.config.errors import ConfigError

SAMPLERS = ("cogvideox_dpm", "cogvideox_ddim")


@dataclass(frozen=True)
class VSchedule:
    """The DDPM noise schedule a v-prediction model was trained on (defaults: CogVideoX-5B / AniSora V1)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"  # scaled_linear (linear in sqrt(beta)) | linear
    snr_shift_scale: float = 1.0  # SNR divided by this (CogVideoX-2B: 3.0, 5B: 1.0)
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"

    def scheduler_config(self) -> dict:
        """Keyword arguments of diffusers' CogVideoX schedulers, as the 5B checkpoints ship them."""
        return dict(asdict(self), prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True,
                    steps_offset=0)


DEFAULT_SCHEDULE = VSchedule()


def alphas_cumprod(schedule: VSchedule = DEFAULT_SCHEDULE) -> torch.Tensor:
    """abar_t for t = 0..N-1 in float64: betas, SNR shift, then the zero-terminal-SNR rescale of sqrt(abar)."""
    n = schedule.num_train_timesteps
    if schedule.beta_schedule == "scaled_linear":
        betas = torch.linspace(schedule.beta_start**0.5, schedule.beta_end**0.5, n, dtype=torch.float64) ** 2
    elif schedule.beta_schedule == "linear":
        betas = torch.linspace(schedule.beta_start, schedule.beta_end, n, dtype=torch.float64)
    else:
        raise ConfigError("model.beta_schedule", f"expected scaled_linear or linear, got {schedule.beta_schedule!r}")
    abar = torch.cumprod(1.0 - betas, dim=0)
    s = schedule.snr_shift_scale
    abar = abar / (s + (1 - s) * abar)
    if schedule.rescale_betas_zero_snr:
        root = abar.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        abar = root**2
    return abar


def build_v_scheduler(spec, schedule: VSchedule = DEFAULT_SCHEDULE):
    """CogVideoX's DPM-Solver++(2M) SDE sampler (default) or its DDIM, on the model's own schedule.

    `spec.shift` does not apply: the SNR shift is part of the schedule the model was trained on
    (`model.snr_shift_scale`)."""
    if spec.name == "cogvideox_dpm":
        return CogVideoXDPMScheduler(**schedule.scheduler_config())
    if spec.name == "cogvideox_ddim":
        return CogVideoXDDIMScheduler(**schedule.scheduler_config())
    raise ConfigError("sampler.name", f"a v-prediction model samples with {' or '.join(SAMPLERS)}, got {spec.name!r}")


def dynamic_guidance_scale(scale: float, t: int, num_steps: int) -> float:
    """The dynamic CFG scale of diffusers' CogVideoX pipelines, formula as written there: it is evaluated at
    the timestep value t (0..999), not at the step index, so the cosine term varies irregularly from step to step.
    AniSora V1's SAT sampler has the same quirk: with 50 trailing steps and scale 6 both give 2.29, 2.54, 6.97, ..."""
    return 1 + scale * ((1 - math.cos(math.pi * ((num_steps - t) / num_steps) ** 5.0)) / 2)


def initial_noise_v(latent_shape: tuple[int, int, int, int], generators: list[torch.Generator],
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """CPU noise (B, C, T, h, w) in `dtype`: each sample drawn as (T, C, h, w), the layout CogVideoX pipelines
    draw in, from its own generator, and in the dtype they draw in (the model's: a bf16 draw is not a rounded
    float32 draw on every torch build), so one clip's noise equals the stock pipeline's for the same seed."""
    c, t, h, w = latent_shape
    parts = [torch.randn((t, c, h, w), generator=g, dtype=dtype) for g in generators]
    return torch.stack(parts).permute(0, 2, 1, 3, 4)
