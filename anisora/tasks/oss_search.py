"""`anisora oss-search`: optimal step schedules (AniSora V2's OSS) for a trained flow-matching checkpoint.

For each of a few held-out benchmark clips (first frame + caption) the teacher samples its full N-step Euler
trajectory with its own CFG; `anisora.diffusion.schedules.oss_search` then picks the K of those N steps whose
K-step Euler run lands closest to it. The element-wise median over clips is written as a schedule file that
`python infer.py sampler.schedule=FILE sampler.num_steps=K` (or evaluate.py, or a student's training) reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from anisora.accelerators.devices import resolve_device
from anisora.backbones import Conditioning
from anisora.config.errors import ConfigError
from anisora.data.synthetic import benchmark_clips
from anisora.diffusion.sampling import SamplerSpec, build_stepper, guided_output, rollout
from anisora.diffusion.schedules import median_schedule, oss_search, write_schedule
from anisora.guidance.pair import pair_from_video
from anisora.inference.loading import LoadedModel, load_model
from anisora.inference.pipeline import from_uint8_frames

log = logging.getLogger("anisora.oss")


def teacher_spec(trained: dict, teacher_steps: int | None) -> SamplerSpec:
    """The checkpoint's own sampler as plain Euler on its shifted grid (no guided-entry replacement, so the
    search and the trajectory it tracks see the same dynamics)."""
    spec = dict(trained)
    spec.update(name="euler", sigmas=None, schedule=None, replace_known=False, clamp_x0=None)
    if teacher_steps:
        spec["num_steps"] = int(teacher_steps)
    return SamplerSpec(**spec)


def benchmark_conditions(model: LoadedModel, count: int):
    """(cond, uncond, latent shape) of the first `count` held-out benchmark clips: first frame and caption."""
    from anisora.tasks.infer import world_from_data

    backbone, device = model.backbone, next(model.backbone.denoiser.parameters()).device
    world = world_from_data(model.data)
    null = backbone.encode_prompt([""])
    shape = backbone.latent_shape(world.num_frames, world.height, world.width)
    for clip in benchmark_clips(world, int(model.data.get("seed", 0)), count):
        g, m = pair_from_video(from_uint8_frames(clip.video), [0])
        cond = backbone.conditioning([clip.caption], g[None].to(device), m[None].to(device))
        yield cond, Conditioning(text=null, guide=cond.guide, image=cond.image), shape


def search_schedules(ckpt: Path, steps: list[int], out: Path, clips: int = 4, teacher_steps: int | None = None,
                     seed: int = 0, accelerator: str = "auto") -> dict[int, Path]:
    """Search a K-step schedule for every K in `steps`; returns the schedule file of each."""
    if not ckpt.is_file():
        raise ConfigError("ckpt", f"{ckpt} does not exist (expected a train.py checkpoint)")
    device = resolve_device(accelerator)
    model = load_model(ckpt, device, torch.float32)
    backbone = model.backbone
    if "euler" not in backbone.objective.samplers:  # OSS picks Euler steps on the teacher's noise levels
        raise ConfigError("ckpt", f"OSS searches Euler steps of flow-matching models; {ckpt} uses "
                          f"{backbone.objective.name}")
    spec = teacher_spec(model.hparams["sampler"], teacher_steps)
    if any(not 1 <= k < spec.num_steps for k in steps):
        raise ConfigError("steps", f"expected step counts in 1..{spec.num_steps - 1}, got {steps}")
    grid = build_stepper(backbone.objective, spec, device).sigmas  # N + 1 levels, 1 ... 0
    chains: dict[int, list[list[int]]] = {k: [] for k in steps}
    for i, (cond, uncond, shape) in enumerate(benchmark_conditions(model, clips)):
        with torch.no_grad():
            run = rollout(backbone, cond, uncond, shape, spec, seeds=[seed + i], record=True)
        states = [s.latents for s in run.steps] + [run.latents]

        @torch.no_grad()
        def velocity(x: torch.Tensor, sigma: float, cond=cond, uncond=uncond) -> torch.Tensor:
            t = torch.full((len(x),), sigma * 1000.0, device=device)
            return guided_output(backbone, x, t, cond, uncond if sigma >= spec.guidance_min_sigma else None,
                                 spec.guidance_scale, cond.text.dtype)

        for k in steps:
            chain, _ = oss_search(velocity, states[0], states, grid, k)
            chains[k].append(chain)
        log.info("clip %d / %d searched", i + 1, clips)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for k in steps:
        indices = median_schedule(chains[k])
        files[k] = write_schedule(out / f"oss_{k}.json", [grid[j] for j in indices], num_steps=k,
                                  teacher_steps=spec.num_steps, teacher_shift=spec.shift, indices=indices,
                                  per_clip=chains[k], checkpoint=str(ckpt))
    return files
