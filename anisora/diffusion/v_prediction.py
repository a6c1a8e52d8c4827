"""v-prediction on a zero-terminal-SNR DDPM schedule (CogVideoX, AniSora V1): training targets and sampling.

Forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; the model predicts
v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0, so x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v. The DiT takes the
integer step index t in [0, 1000) as its timestep. MSE on v equals the x0 loss weighted by 1 / (1 - abar_t) that
AniSora V1 trains with.

The sampling loop follows diffusers' CogVideoXImageToVideoPipeline step for step (same schedulers, the same
`scheduler.step` calls, the same CFG formula including its optional dynamic scale, noise drawn in the pipeline's
(T, C, h, w) layout and dtype, latents kept in the model's dtype between steps), so for one clip it gives the stock
pipeline's latents for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from anisora.backbones.base import BackboneAdapter, Conditioning
from anisora.config.errors import ConfigError
from anisora.diffusion.sampling import SamplerSpec, branch_context, reset_caches

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


def _coefficients(t: torch.Tensor, like: torch.Tensor, schedule: VSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    abar = alphas_cumprod(schedule).to(like.device)[t.to(like.device).long()]
    shape = (-1, *([1] * (like.ndim - 1)))
    return abar.sqrt().view(shape).to(like.dtype), (1 - abar).sqrt().view(shape).to(like.dtype)


def sample_timesteps(batch: int, generator: torch.Generator | None = None,
                     schedule: VSchedule = DEFAULT_SCHEDULE) -> torch.Tensor:
    """Training step indices, uniform over 0..N-1 (int64)."""
    return torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)


def noisy_sample_v(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   schedule: VSchedule = DEFAULT_SCHEDULE) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, v target) for step indices t (B,)."""
    a, s = _coefficients(t, x0, schedule)
    return a * x0 + s * noise, a * noise - s * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, schedule: VSchedule = DEFAULT_SCHEDULE
              ) -> torch.Tensor:
    """The clean sample implied by a v prediction at step indices t (B,)."""
    a, s = _coefficients(t, x_t, schedule)
    return a * x_t - s * v


def build_v_scheduler(spec: SamplerSpec, schedule: VSchedule = DEFAULT_SCHEDULE):
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


@torch.no_grad()
def sample_v_prediction(backbone: BackboneAdapter, cond: Conditioning, uncond: Conditioning | None,
                        latent_shape: tuple[int, int, int, int], seeds: list[int], spec: SamplerSpec,
                        progress: bool = False, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                        generators: list[torch.Generator] | None = None, dynamic_cfg: bool | None = None
                        ) -> torch.Tensor:
    """Denoise from seeded noise -> latents (B, C, T, h, w).

    One CPU generator per sample, `torch.Generator("cpu").manual_seed(seed)`, draws its initial noise and then
    the noise the DPM sampler injects at every step. Pass `generators` instead of seeds to continue generators
    that already encoded the guide (the stock pipeline draws the guide latent, the initial noise and the step
    noise from one generator, in that order). CFG batches [uncond, cond] as the pipeline does; `dynamic_cfg`
    (default: `spec.dynamic_cfg` when the spec has it, else off) turns on the pipeline's dynamic scale.
    `spec.guidance_min_sigma` limits CFG to steps whose noise level sqrt(1 - abar_t) is at least that value;
    `spec.clamp_x0` clamps the implied clean latent. Guided entries cannot be re-imposed on VAE latents, so
    `known` must be None."""
    if known is not None and spec.replace_known:
        raise ConfigError("sampler.replace_known", "not available for a v-prediction model with a VAE; set false")
    schedule = getattr(backbone, "noise_schedule", DEFAULT_SCHEDULE)
    scheduler = build_v_scheduler(spec, schedule)
    device, dtype = cond.text.device, cond.text.dtype
    scheduler.set_timesteps(spec.num_steps, device=device)
    timesteps = scheduler.timesteps
    num_steps = spec.num_steps
    if generators is None:
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    if dynamic_cfg is None:
        dynamic_cfg = bool(getattr(spec, "dynamic_cfg", False))
    abar = alphas_cumprod(schedule)
    # the scheduler works in the pipeline's (B, T, C, h, w) layout, and the latents stay in the model's dtype
    # between steps as the pipeline keeps them, so that the noise the DPM sampler draws is the pipeline's
    latents = initial_noise_v(latent_shape, generators, dtype).permute(0, 2, 1, 3, 4).to(device)
    latents = latents * scheduler.init_noise_sigma
    use_cfg = uncond is not None and spec.guidance_scale > 1.0
    both = Conditioning.cat([uncond, cond]) if use_cfg else cond
    reset_caches(backbone)
    is_dpm = isinstance(scheduler, CogVideoXDPMScheduler)
    old_x0 = None
    iterator = timesteps
    if progress:
        from rich.progress import track

        iterator = track(timesteps, description="sampling", transient=True)
    for i, t in enumerate(iterator):
        sigma = float((1 - abar[int(t)]).sqrt())
        guided = use_cfg and sigma >= spec.guidance_min_sigma
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        timestep = t.expand(model_in.shape[0])
        backbone.current_timestep = int(t)
        with branch_context(backbone, "cfg" if guided else "cond"):
            pred = backbone.denoise(model_in.permute(0, 2, 1, 3, 4).to(dtype), timestep, both if guided else cond)
        pred = pred.permute(0, 2, 1, 3, 4).float()
        if guided:
            scale = dynamic_guidance_scale(spec.guidance_scale, t.item(), num_steps) if dynamic_cfg \
                else spec.guidance_scale
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + scale * (pred_cond - pred_uncond)
        if spec.clamp_x0 is not None:
            a, s = math.sqrt(float(abar[int(t)])), sigma
            x0 = (a * latents - s * pred).clamp(-spec.clamp_x0, spec.clamp_x0)
            pred = (a * latents - x0) / s
        if is_dpm:
            latents, old_x0 = scheduler.step(pred, old_x0, t, timesteps[i - 1] if i > 0 else None, latents,
                                             generator=generators, return_dict=False)
        else:
            latents = scheduler.step(pred, t, latents, eta=0.0, generator=generators, return_dict=False)[0]
        latents = latents.to(dtype)
    reset_caches(backbone)
    return latents.permute(0, 2, 1, 3, 4)
