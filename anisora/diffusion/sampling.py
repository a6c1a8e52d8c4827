"""The sampling loop: diffusers schedulers, classifier-free guidance, seeded noise.

Mirrors the denoising loop of diffusers' Wan pipelines (same scheduler calls, same CFG formula),
so a backbone sampled here matches the stock pipeline for the same components.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from anisora.backbones.base import BackboneAdapter, Conditioning
from anisora.diffusion.flow_matching import NUM_TRAIN_TIMESTEPS


@dataclass
class SamplerSpec:
    name: str = "euler"  # euler | unipc (flow matching); cogvideox_dpm | cogvideox_ddim (v-prediction)
    num_steps: int = 30
    shift: float = 3.0
    guidance_scale: float = 5.0
    guidance_min_sigma: float = 0.0  # CFG only while sigma >= this (guidance interval); 0 = every step
    clamp_x0: float | None = None  # clamp the implied clean latent to [-c, c] each step (dynamic thresholding)
    replace_known: bool = False  # re-impose guided latent entries (noised to the current level) after each step
    dynamic_cfg: bool = False  # CogVideoX's cosine guidance schedule (v-prediction samplers)


def build_scheduler(spec: SamplerSpec):
    if spec.name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.shift)
    if spec.name == "unipc":
        return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                       use_flow_sigmas=True, flow_shift=spec.shift)
    raise ValueError(f"sampler.name: expected euler or unipc, got {spec.name!r}")


def branch_context(backbone: BackboneAdapter, name: str):
    """diffusers' cache hooks keep separate state per named context: one for the batched CFG call, one for a
    conditional-only call (after CFG truncation); a no-op without cache hooks."""
    denoiser = backbone.denoiser
    if getattr(denoiser, "is_cache_enabled", False):
        return denoiser.cache_context(name)
    return contextlib.nullcontext()


def reset_caches(backbone: BackboneAdapter) -> None:
    """Forget the previous video's cached states (cache hooks are stateful across calls)."""
    if getattr(backbone.denoiser, "is_cache_enabled", False):
        backbone.denoiser._reset_stateful_cache()


def initial_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One generator per sample: a clip's noise depends on its seed alone, not on batch composition."""
    parts = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
             for s in seeds]
    return torch.stack(parts).to(device=device, dtype=dtype)


@torch.no_grad()
def sample(backbone: BackboneAdapter, cond: Conditioning, uncond: Conditioning | None, latent_shape: tuple[int, ...],
           seeds: list[int], spec: SamplerSpec, progress: bool = False,
           known: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Denoise from seeded noise; CFG runs cond and uncond in one batched call when uncond is given.

    `known` = (values, mask) of latent entries fixed by the guide: with `spec.replace_known` they are
    put back after every step at the next step's noise level (the replacement used for inpainting and by
    Wan2.2's first-frame conditioning), so guided pixels end exactly as given."""
    device, dtype = cond.text.device, cond.text.dtype
    scheduler = build_scheduler(spec)
    scheduler.set_timesteps(spec.num_steps, device=device)
    latents = initial_noise(latent_shape, seeds, device, torch.float32)
    noise = latents.clone()
    replace = known is not None and spec.replace_known
    sigmas = [float(s) for s in scheduler.sigmas] if replace else []
    use_cfg = uncond is not None and spec.guidance_scale != 1.0
    uncond_first = bool(getattr(backbone, "cfg_uncond_first", False))  # FasterCache's batch layout
    both = (Conditioning.cat([uncond, cond] if uncond_first else [cond, uncond])) if use_cfg else cond
    reset_caches(backbone)
    steps = scheduler.timesteps
    iterator = steps
    if progress:
        from rich.progress import track

        iterator = track(steps, description="sampling", transient=True)
    for i, t in enumerate(iterator):
        sigma = float(t) / NUM_TRAIN_TIMESTEPS
        guided = use_cfg and sigma >= spec.guidance_min_sigma
        model_in = torch.cat([latents, latents]) if guided else latents
        timestep = t.expand(model_in.shape[0]).to(device)
        backbone.current_timestep = int(t)
        with branch_context(backbone, "cfg" if guided else "cond"):
            pred = backbone.denoise(model_in.to(dtype), timestep, both if guided else cond).float()
        if guided:
            pred_cond, pred_uncond = pred.chunk(2)[::-1] if uncond_first else pred.chunk(2)
            pred = pred_uncond + spec.guidance_scale * (pred_cond - pred_uncond)
        if spec.clamp_x0 is not None and sigma > 0:
            x0 = (latents - sigma * pred).clamp(-spec.clamp_x0, spec.clamp_x0)
            pred = (latents - x0) / sigma
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        if replace:
            values, mask = known
            nxt = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            latents = torch.where(mask, (1 - nxt) * values.float() + nxt * noise, latents)
    reset_caches(backbone)
    return latents
