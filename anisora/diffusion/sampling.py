"""The one sampler core: `rollout()` denoises seeded noise with a backbone for validation, infer.py, evaluate.py,
the benchmarks, distillation (with gradients) and RL (with the trajectory and per-step log-probabilities).

The loop is the same for every objective; what differs lives in a *stepper* the objective's sampler names:
diffusers' flow schedulers (Euler, UniPC) as Wan's pipelines call them, an Euler step on an exact sigma list
(few-step students), a stochastic flow SDE with log-probabilities (Flow-GRPO), and CogVideoX's DDIM/DPM
schedulers as its I2V pipeline calls them (noise drawn in that pipeline's layout and dtype). So a backbone
sampled here matches the stock pipeline for the same components and seed.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint as recompute

from anisora.backbones.base import BackboneAdapter, Conditioning
from anisora.config.errors import ConfigError
from anisora.config.schema import SamplerConfig as SamplerSpec
from anisora.diffusion.objectives import FlowMatching, Objective
from anisora.diffusion.schedules import resolved_sigmas
from anisora.diffusion.v_prediction import build_v_scheduler, dynamic_guidance_scale, initial_noise_v

__all__ = ["SamplerSpec", "Rollout", "RolloutStep", "rollout", "sample", "guided", "build_scheduler",
           "sde_log_prob", "seeded_noise", "branch_context", "reset_caches", "stock_scheduler"]


def guided(cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in the Ho-Salimans form: uncond + scale (cond - uncond); 1 = no guidance."""
    return uncond_out + scale * (cond_out - uncond_out)


def build_scheduler(spec: SamplerSpec):
    """A diffusers flow scheduler for `spec` (also what exported pipelines ship)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if spec.name in ("euler", "flow_sde", "euler_renoise"):
        exact = spec.sigmas or spec.schedule
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0 if exact else spec.shift)
    if spec.name == "unipc":
        return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                       use_flow_sigmas=True, flow_shift=spec.shift)
    raise ConfigError("sampler.name",
                      f"a flow-matching model samples with {', '.join(FlowMatching.samplers)}, got {spec.name!r}")


def stock_scheduler(spec: SamplerSpec):
    """The scheduler a stock diffusers pipeline needs to sample like `spec`: `build_scheduler`'s, except for an
    exact few-step grid, which stock pipelines reach only through UniPC's first-order flow grid
    (`anisora.diffusion.schedules.stock_scheduler_config`: exact Euler, levels within 1e-3 of the list)."""
    if resolved_sigmas(spec) is None:
        return build_scheduler(spec)
    from diffusers import UniPCMultistepScheduler

    from anisora.diffusion.schedules import stock_scheduler_config

    return UniPCMultistepScheduler(**stock_scheduler_config(spec))


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


def seeded_noise(shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device) -> torch.Tensor:
    """Float32 noise, one draw per sample from its own generator: a clip's noise depends on its seed alone."""
    parts = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(parts).to(device=device, dtype=torch.float32)


def step_noise(like: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Fresh per-sample noise from each sample's own generator (stochastic steps)."""
    return torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators]).to(like.device, like.dtype)


def sde_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log-density of a Gaussian step, averaged over latent elements (Flow-GRPO's convention, so
    policy ratios stay near 1)."""
    std = std.view(-1, *([1] * (sample.ndim - 1))).to(sample.dtype) if std.ndim else std
    logp = -((sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).mean(dim=1)


def flow_sde_mean_std(latents: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float,
                      noise_level: float, std_sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-GRPO's SDE step from sigma to sigma_next (< sigma): sigma_t = a sqrt(s / (1 - s)),
    mean = x + [v (1 + sigma_t^2 (1 - s) / (2 s)) + x sigma_t^2 / (2 s)] ds, std = sigma_t sqrt(-ds).
    `std_sigma` stands in for s in sigma_t where s = 1 (pure noise) would make it infinite: the next grid level,
    as Flow-GRPO does."""
    ds = sigma_next - sigma
    s = sigma
    level = std_sigma if std_sigma is not None else sigma
    sigma_t = noise_level * math.sqrt(level / (1 - level))
    mean = latents + (velocity * (1 + sigma_t**2 * (1 - s) / (2 * s)) + latents * sigma_t**2 / (2 * s)) * ds
    return mean, torch.tensor(sigma_t * math.sqrt(-ds), device=latents.device)


# ------------------------------------------------------------------------------------------------------ steppers
class Stepper(ABC):
    """One sampling schedule: the step list and the update; latents are (B, C, T, h, w) outside."""

    stochastic = False

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.timesteps: torch.Tensor = torch.empty(0)

    @abstractmethod
    def start(self, shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
        """Initial latents from per-sample generators (which later stochastic steps continue)."""

    @abstractmethod
    def level(self, i: int) -> torch.Tensor:
        """The objective's noise level at step i."""

    @abstractmethod
    def next_level(self, i: int) -> torch.Tensor | None:
        """The level after step i; None when step i ends clean."""

    def noise_std(self, i: int) -> float:
        return float(self.objective.noise_std(self.level(i)))

    def model_input(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        return latents

    @abstractmethod
    def step(self, output: torch.Tensor, i: int, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Latents after step i and what a trajectory records of it (`log_prob`, `mean`, `std` when stochastic)."""


class DiffusersFlowStepper(Stepper):
    """diffusers' FlowMatchEuler / UniPC schedulers, called as Wan's pipelines call them; exact sigma lists go
    to the Euler scheduler unshifted."""

    def __init__(self, objective: Objective, spec: SamplerSpec, device: torch.device) -> None:
        super().__init__(objective)
        self.scheduler = build_scheduler(spec)
        sigmas = resolved_sigmas(spec)
        if sigmas:
            if spec.name != "euler":
                raise ConfigError("sampler.sigmas", f"an exact sigma list needs sampler.name=euler, got {spec.name}")
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        else:
            self.scheduler.set_timesteps(spec.num_steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self.sigmas = [float(s) for s in self.scheduler.sigmas]

    def start(self, shape, generators, device, dtype):
        return seeded_noise(shape, generators, device)

    def level(self, i):
        return torch.tensor([float(self.timesteps[i]) / 1000.0])

    def next_level(self, i):
        return torch.tensor([self.sigmas[i + 1]]) if i + 1 < len(self.sigmas) else None

    def step(self, output, i, latents):
        return self.scheduler.step(output, self.timesteps[i], latents, return_dict=False)[0], {}


class ExactFlowStepper(Stepper):
    """Steps on the sigma grid itself: `flow_sde` (Flow-GRPO's stochastic step, with per-step log-probabilities)
    and `euler_renoise` (x0 estimate, then fresh noise at the next level, as FastVideo samples DMD students)."""

    stochastic = True

    def __init__(self, objective: Objective, spec: SamplerSpec, device: torch.device) -> None:
        super().__init__(objective)
        grid = DiffusersFlowStepper(objective, SamplerSpec(name="euler", num_steps=spec.num_steps, shift=spec.shift,
                                                           sigmas=resolved_sigmas(spec)), device)
        self.sigmas, self.timesteps = grid.sigmas, grid.timesteps
        self.kind, self.noise_level = spec.name, float(spec.noise_level)
        self.generators: list[torch.Generator] = []

    def start(self, shape, generators, device, dtype):
        self.generators = generators
        return seeded_noise(shape, generators, device)

    def level(self, i):
        return torch.tensor([self.sigmas[i]])

    def next_level(self, i):
        return torch.tensor([self.sigmas[i + 1]])

    def step(self, output, i, latents):
        sigma, nxt = self.sigmas[i], self.sigmas[i + 1]
        if self.kind == "euler_renoise":
            x0 = latents - sigma * output
            if nxt == 0:
                return x0, {}
            return (1 - nxt) * x0 + nxt * step_noise(latents, self.generators), {}
        if nxt == 0:  # the last step of an SDE is deterministic
            return latents + (nxt - sigma) * output, {}
        std_sigma = sigma if sigma < 1 else self.sigmas[1]
        mean, std = flow_sde_mean_std(latents, output, sigma, nxt, self.noise_level, std_sigma)
        nxt_latents = mean + std * step_noise(latents, self.generators)
        return nxt_latents, {"mean": mean, "std": std, "log_prob": sde_log_prob(nxt_latents, mean, std)}


class VPredictionStepper(Stepper):
    """CogVideoX's DPM-Solver++(2M) SDE or DDIM scheduler as diffusers' CogVideoXImageToVideoPipeline runs it: noise
    drawn as (T, C, h, w) per sample in the model's dtype, latents kept in that dtype and stepped in the pipeline's
    (B, T, C, h, w) layout, step noise from the same per-sample generators."""

    def __init__(self, objective: Objective, spec: SamplerSpec, device: torch.device) -> None:
        super().__init__(objective)
        from diffusers import CogVideoXDPMScheduler

        if spec.sigmas:
            raise ConfigError("sampler.sigmas", "exact sigma lists are for flow-matching models; set null")
        self.scheduler = build_v_scheduler(spec, objective.schedule)
        self.scheduler.set_timesteps(spec.num_steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self.is_dpm = isinstance(self.scheduler, CogVideoXDPMScheduler)
        self.old_x0 = None
        self.generators: list[torch.Generator] = []
        self.dtype = torch.float32

    def start(self, shape, generators, device, dtype):
        self.generators, self.dtype = generators, dtype
        latents = initial_noise_v(shape, generators, dtype).permute(0, 2, 1, 3, 4).to(device)
        return (latents * self.scheduler.init_noise_sigma).permute(0, 2, 1, 3, 4)

    def level(self, i):
        return self.timesteps[i].view(1).cpu()

    def next_level(self, i):
        return self.timesteps[i + 1].view(1).cpu() if i + 1 < len(self.timesteps) else None

    def model_input(self, latents, i):
        return self.scheduler.scale_model_input(latents, self.timesteps[i])

    def step(self, output, i, latents):
        t = self.timesteps[i]
        out, lat = output.permute(0, 2, 1, 3, 4), latents.permute(0, 2, 1, 3, 4)
        if self.is_dpm:
            prev = self.timesteps[i - 1] if i > 0 else None
            lat, self.old_x0 = self.scheduler.step(out, self.old_x0, t, prev, lat, generator=self.generators,
                                                   return_dict=False)
        else:
            lat = self.scheduler.step(out, t, lat, eta=0.0, generator=self.generators, return_dict=False)[0]
        return lat.to(self.dtype).permute(0, 2, 1, 3, 4), {}


STEPPERS: dict[str, type[Stepper]] = {
    "euler": DiffusersFlowStepper, "unipc": DiffusersFlowStepper, "flow_sde": ExactFlowStepper,
    "euler_renoise": ExactFlowStepper, "cogvideox_dpm": VPredictionStepper, "cogvideox_ddim": VPredictionStepper,
}


def build_stepper(objective: Objective, spec: SamplerSpec, device: torch.device) -> Stepper:
    """The stepper of `spec`; a sampler that cannot integrate this objective's output fails in one line."""
    if spec.name not in objective.samplers:
        raise ConfigError("sampler.name", f"a {objective.name} model samples with {' or '.join(objective.samplers)}, "
                          f"got {spec.name!r}")
    return STEPPERS[spec.name](objective, spec, device)


# ------------------------------------------------------------------------------------------------------ the loop
@dataclass
class RolloutStep:
    """One recorded step: its input latents, timestep, (guided) model output and, for stochastic samplers,
    the step's mean, std and the log-probability of the latents it produced."""

    latents: torch.Tensor
    timestep: torch.Tensor
    output: torch.Tensor
    next_latents: torch.Tensor
    log_prob: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


@dataclass
class Rollout:
    latents: torch.Tensor  # final latents (B, C, T, h, w), float32 (v-prediction: the model's dtype)
    steps: list[RolloutStep] = field(default_factory=list)

    @property
    def log_probs(self) -> torch.Tensor | None:
        """(B, steps) log-probabilities of the stochastic steps, or None."""
        rows = [s.log_prob for s in self.steps if s.log_prob is not None]
        return torch.stack(rows, dim=1) if rows else None


def model_output(backbone: BackboneAdapter, model_in: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                 dtype: torch.dtype, checkpointed: bool) -> torch.Tensor:
    """One denoiser call in float32 out; under `checkpointed` its activations are recomputed in backward."""
    def call(x: torch.Tensor) -> torch.Tensor:
        return backbone.denoise(x.to(dtype), timestep, cond).float()

    if checkpointed and torch.is_grad_enabled():
        return recompute(call, model_in, use_reentrant=False)
    return call(model_in)


def cfg_pair(backbone: BackboneAdapter, cond: Conditioning, uncond: Conditioning) -> tuple[Conditioning, bool]:
    """cond and uncond as one batch, in the order the backbone's stock pipeline stacks them, and whether uncond
    comes first."""
    uncond_first = bool(getattr(backbone, "cfg_uncond_first", False)) or backbone.objective.cfg_uncond_first
    return Conditioning.cat([uncond, cond] if uncond_first else [cond, uncond]), uncond_first


def guided_output(backbone: BackboneAdapter, model_in: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                  uncond: Conditioning | None, scale: float, dtype: torch.dtype, checkpointed: bool = False,
                  pair: tuple[Conditioning, bool] | None = None) -> torch.Tensor:
    """The denoiser's output with classifier-free guidance (the one CFG call): cond and uncond in one batched call,
    combined at `scale`; without `uncond`, the conditional call alone. `pair`: `cfg_pair`'s result, when a loop
    builds it once."""
    if uncond is None:
        return model_output(backbone, model_in, timestep, cond, dtype, checkpointed)
    both, uncond_first = pair or cfg_pair(backbone, cond, uncond)
    out = model_output(backbone, torch.cat([model_in, model_in]), torch.cat([timestep, timestep]), both, dtype,
                       checkpointed)
    first, second = out.chunk(2)
    cond_out, uncond_out = (second, first) if uncond_first else (first, second)
    return guided(cond_out, uncond_out, scale)


def rollout(backbone: BackboneAdapter, cond: Conditioning, uncond: Conditioning | None,
            latent_shape: tuple[int, ...], spec: SamplerSpec, seeds: list[int] | None = None,
            generators: list[torch.Generator] | None = None, known: tuple[torch.Tensor, torch.Tensor] | None = None,
            grad: bool = False, grad_steps: int | None = None, checkpoint: bool = False, record: bool = False,
            progress: bool = False, start: torch.Tensor | None = None) -> Rollout:
    """Denoise from seeded noise (or `start`) -> final latents, and the trajectory with `record`.

    One CPU generator per sample (`seeds`, or `generators` that already drew something, as the CogVideoX pipeline
    draws its guide latent first) draws the initial noise and any step noise. CFG runs cond and uncond in one
    batched call at every step whose noise share is >= `spec.guidance_min_sigma`; `spec.dynamic_cfg` uses
    CogVideoX's cosine scale. `known` = (values, mask) of latent entries fixed by the guide: with
    `spec.replace_known` they are put back after every step at the next step's noise level, so guided pixels end
    exactly as given. `grad`: gradients flow through the last `grad_steps` steps (all when None), with each
    denoiser call recomputed in backward under `checkpoint`."""
    objective: Objective = backbone.objective
    device, dtype = cond.text.device, cond.text.dtype
    stepper = build_stepper(objective, spec, device)
    if generators is None:
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in (seeds or [0])]
    latents = stepper.start(latent_shape, generators, device, dtype) if start is None else start
    replace = known is not None and spec.replace_known  # known_latents() is None where a VAE mixes pixels
    noise = latents.clone()
    use_cfg = uncond is not None and spec.guidance_scale != 1.0
    pair = cfg_pair(backbone, cond, uncond) if use_cfg else None
    steps = stepper.timesteps
    first_grad = 0 if grad_steps is None else max(0, len(steps) - int(grad_steps))
    recorded: list[RolloutStep] = []
    iterator = range(len(steps))
    if progress:
        from rich.progress import track

        iterator = track(iterator, description="sampling", transient=True)
    reset_caches(backbone)
    for i in iterator:
        t = steps[i]
        with torch.set_grad_enabled(grad and i >= first_grad):
            cfg_now = use_cfg and stepper.noise_std(i) >= spec.guidance_min_sigma
            timestep = t.expand(latents.shape[0]).to(device)
            backbone.current_timestep = int(t)
            scale = dynamic_guidance_scale(spec.guidance_scale, float(t), len(steps)) if spec.dynamic_cfg \
                else spec.guidance_scale
            with branch_context(backbone, "cfg" if cfg_now else "cond"):
                out = guided_output(backbone, stepper.model_input(latents, i), timestep, cond,
                                    uncond if cfg_now else None, scale, dtype, checkpoint, pair)
            if spec.clamp_x0 is not None and stepper.noise_std(i) > 0:
                level = stepper.level(i)
                x0 = objective.x0_from_output(latents, out, level).clamp(-spec.clamp_x0, spec.clamp_x0)
                out = objective.output_from_x0(latents, x0, level)
            nxt, extra = stepper.step(out, i, latents)
            if replace:
                values, mask = known
                level = stepper.next_level(i)
                target = values.float() if level is None or float(objective.noise_std(level)) == 0 \
                    else objective.add_noise(values.float(), noise, level)
                nxt = torch.where(mask, target, nxt)
        if record:
            keep = (lambda x: x) if grad else (lambda x: x.detach())
            recorded.append(RolloutStep(keep(latents), t.detach().expand(latents.shape[0]), keep(out), keep(nxt),
                                        **{k: keep(v) for k, v in extra.items()}))
        latents = nxt
    reset_caches(backbone)
    return Rollout(latents, recorded)


@torch.no_grad()
def sample(backbone: BackboneAdapter, cond: Conditioning, uncond: Conditioning | None, latent_shape: tuple[int, ...],
           seeds: list[int], spec: SamplerSpec, progress: bool = False,
           known: tuple[torch.Tensor, torch.Tensor] | None = None,
           generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """`rollout` without gradients or trajectory -> final latents (B, C, T, h, w)."""
    return rollout(backbone, cond, uncond, latent_shape, spec, seeds=seeds, generators=generators, known=known,
                   progress=progress).latents
