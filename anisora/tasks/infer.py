"""infer.py: sample clips from a checkpoint -> mp4 files, a contact sheet and (optionally) PNG frames."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from anisora.accelerators.devices import (
    check_attention_backend,
    inference_dtype,
    local_device,
    resolve_device,
    set_attention_backend,
    set_num_threads,
)
from anisora.accelerators.distributed import close_process_group, init_process_group, require_world
from anisora.backbones import check_folder, check_model_config, latent_grid, load_pretrained, one_guide_per_slot
from anisora.backbones.base import check_clip_shape
from anisora.config.errors import ConfigError
from anisora.config.validate import check_node
from anisora.data.captions import caption_with_scores
from anisora.data.synthetic import WorldConfig, benchmark_clips
from anisora.diffusion.sampling import SamplerSpec
from anisora.evaluation.metrics import masked_psnr
from anisora.guidance.spec import GuideSpec, build_pair, check_one_guide_per_slot, guide_spec
from anisora.inference.guide_files import GuideFiles, check_guide_paths, guide_paths
from anisora.inference.loading import load_model, read_hparams, trained_data
from anisora.inference.pipeline import from_uint8_frames, generate, to_uint8_frames
from anisora.inference.speedups import SpeedupSpec, apply_speedups, check_speedups
from anisora.inference.speedups.caches import check_cache_memory
from anisora.inference.video_io import (
    display_scale,
    encode_png,
    write_contact_sheet,
    write_mp4,
    write_png_frames,
)
from anisora.io import atomic_write_bytes, atomic_write_text
from anisora.tasks.common import environment_defaults, find_checkpoint, run_task, write_run_record

log = logging.getLogger("anisora.infer")
GROUPS = ["guide", "sampler", "accelerator", "out", "paths"]


def check_guide_files(cfg: DictConfig) -> bool:
    """Every guide file exists, before anything is loaded; True when the guide brings its own pixels."""
    own = check_guide_paths(cfg.guide)
    if own and not cfg.prompt:
        raise ConfigError("prompt", "a prompt is required when guide images or a guide video are given")
    return own


def sampler_spec(cfg: DictConfig, trained: dict | None = None) -> SamplerSpec:
    """The sampler to use. For a train.py checkpoint (`trained`: its hyper-parameters) that is the sampler it
    validated with, so a v-prediction model samples with its own sampler, with any `sampler.*` key given on the
    command line applied on top; `sampler=NAME` on the command line replaces it whole."""
    mine = OmegaConf.to_container(cfg.sampler, resolve=True)
    if not trained or "sampler" not in trained or "sampler" in command_line_groups():
        return SamplerSpec(**mine)
    given = command_line_keys("sampler")
    merged = {**trained["sampler"], **{k: v for k, v in mine.items() if k in given}}
    return SamplerSpec(**{k: v for k, v in merged.items() if k in SamplerSpec.__dataclass_fields__})


def command_line_overrides() -> list[str]:
    """The task's command-line overrides (empty outside a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def command_line_groups() -> set[str]:
    """Config groups chosen on the command line (`sampler=unipc` -> "sampler")."""
    return {o.split("=", 1)[0].lstrip("+~") for o in command_line_overrides() if "." not in o.split("=", 1)[0]}


def command_line_keys(group: str) -> set[str]:
    """Keys of `group` set on the command line (`sampler.num_steps=8` -> "num_steps")."""
    prefix = f"{group}."
    keys = (o.split("=", 1)[0].lstrip("+~") for o in command_line_overrides())
    return {k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)}


def world_from_data(data: dict) -> WorldConfig:
    """The synthetic world a checkpoint was trained on (benchmark clips come from the same world)."""
    return WorldConfig(num_frames=data["num_frames"], height=data["height"], width=data["width"],
                       sprite_size=int(data.get("sprite_size", 9)),
                       slowest_speed=float(data.get("slowest_speed", 1 / 3)))


def benchmark_requests(world: WorldConfig, seed: int, count: int, prompt: str | None):
    """Held-out benchmark clips: (reference video (3, F, H, W), caption, clip)."""
    clips = benchmark_clips(world, seed, count)
    return [(from_uint8_frames(clip.video), prompt or clip.caption, clip) for clip in clips]


@dataclass
class Plan:
    """What infer.py will sample, decided (and checked) before any weights are loaded."""

    source: str  # "lightning" (a train.py checkpoint) or "folder" (a diffusers-format model folder)
    ckpt: Path
    frames: int
    height: int
    width: int
    hparams: dict | None = None


def plan(cfg: DictConfig, own_pixels: bool) -> Plan:
    spec = str(cfg.ckpt)
    folder = Path(spec).expanduser()
    if spec not in ("last", "latest") and folder.is_dir():
        model = OmegaConf.to_container(cfg.model, resolve=True)
        check_folder(model, folder)
        check_node(cfg.model, "model")
        native = cfg.model.native
        f, h, w = (cfg.size[k] if cfg.size[k] is not None else native[k] for k in ("num_frames", "height", "width"))
        check_clip_shape(f, h, w, *latent_grid(model), prefix="size")
        variant = cfg.model.get("variant", "i2v")
        if variant == "i2v" and not own_pixels:
            raise ConfigError("guide.frames", "an image-to-video model needs guide images: guide.frames=[first.png]")
        if variant == "t2v" and own_pixels:
            raise ConfigError("guide.frames", "a text-to-video model takes no guide images; leave guide.frames empty")
        if not cfg.prompt:
            raise ConfigError("prompt", "a prompt is required with a model folder")
        check_model_config(dict(model, ckpt=str(folder)), cfg.accelerator.name, cfg.accelerator.precision)
        return Plan("folder", folder, f, h, w)
    ckpt = find_checkpoint(cfg.ckpt, Path(cfg.paths.log_dir), "ckpt")
    hparams = read_hparams(ckpt)
    data = trained_data(hparams)
    return Plan("lightning", ckpt, data["num_frames"], data["height"], data["width"], hparams)


def load_backbone(cfg: DictConfig, job: Plan, device: torch.device, dtype: torch.dtype):
    if job.source == "folder":
        backbone = load_pretrained(OmegaConf.to_container(cfg.model, resolve=True), str(job.ckpt), dtype)
        return backbone.to(device).eval()
    return load_model(job.ckpt, device, dtype).backbone


def infer(cfg: DictConfig, run_dir: Path) -> list[Path]:
    own_pixels = check_guide_files(cfg)
    job = plan(cfg, own_pixels)
    f, h, w = job.frames, job.height, job.width
    spec = guide_spec(cfg.guide, f) if (own_pixels or job.source == "lightning") else GuideSpec((), ())
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if job.source == "folder" and one_guide_per_slot(model):  # each guide frame owns a latent frame there
        check_one_guide_per_slot(spec.indices, latent_grid(model)[0])
    files = GuideFiles(h, w, cfg.guide.resize)
    if own_pixels or job.source == "folder":
        requests = [(None, cfg.prompt, None)]
    else:
        data = trained_data(job.hparams)
        requests = benchmark_requests(world_from_data(data), int(data.get("seed", 0)), cfg.num_clips, cfg.prompt)
    pairs = [build_pair(spec, f, h, w, files.image, files.video, reference, cfg.guide.mask_threshold, files.mask)
             for reference, _, _ in requests]  # reads and checks every guide file before anything is written
    device = resolve_device(cfg.accelerator.name)
    check_attention_backend(cfg.accelerator.attention_backend)
    speedups = SpeedupSpec.from_config(cfg.speedup)
    main_process = True
    if speedups.context_parallel > 1:  # one video over the processes of a torchrun launch; rank 0 writes
        place = require_world(speedups.context_parallel, "speedup.context_parallel")
        device, main_process = local_device(cfg.accelerator.name, place.local_rank), place.is_main
        init_process_group(device)
    check_speedups(speedups, device)
    environment_defaults()
    if main_process:
        write_run_record(cfg, run_dir)
    set_num_threads(cfg.accelerator.num_threads)

    backbone = load_backbone(cfg, job, device, inference_dtype(device, cfg.accelerator.precision))
    set_attention_backend(backbone.denoiser, cfg.accelerator.attention_backend, device,
                          next(backbone.denoiser.parameters()).dtype)
    apply_speedups(backbone, speedups, device)
    sampler = sampler_spec(cfg, job.hparams)
    cfg_rows = 2 if sampler.guidance_scale > 1.0 else 1
    check_cache_memory(backbone, speedups, backbone.latent_shape(f, h, w), len(requests) * cfg_rows, device)
    guide = torch.stack([p[0] for p in pairs])
    mask = torch.stack([p[1] for p in pairs])
    prompts = [caption_with_scores(r[1], cfg.motion_score, cfg.aesthetic_score) for r in requests]
    seeds = [cfg.seed + i for i in range(len(requests))]
    ckpt = job.ckpt
    log.info("sampling %d clip(s) of %dx%dx%d from %s", len(requests), f, h, w, ckpt)
    offload = job.source == "folder" and bool(cfg.model.get("offload_encoders", False))
    out = generate(backbone, prompts, guide, mask, seeds, sampler, cfg.negative_prompt,
                   progress=main_process, offload_encoders=offload)
    close_process_group()
    if not main_process:
        return []

    written, fidelity = [], []
    scale = display_scale(h, w)
    for i, clip in enumerate(out):
        written.append(write_mp4(run_dir / "videos" / f"clip{i:02d}.mp4", clip, fps=cfg.out.fps, scale=scale))
        if cfg.out.frames == "png":
            write_png_frames(run_dir / "frames" / f"clip{i:02d}", clip)
        guides = {}
        for f_index in [int(k) for k in torch.nonzero(mask[i].flatten(1).amax(dim=1)).flatten()]:
            given = to_uint8_frames(guide[i : i + 1, :, f_index : f_index + 1])[0, 0]
            keep = mask[i, f_index].numpy() > 0
            atomic_write_bytes(run_dir / "guides" / f"clip{i:02d}_frame{f_index:04d}.png", encode_png(given))
            guides[str(f_index)] = round(masked_psnr(clip[f_index], given, keep), 3)
        fidelity.append(guides)
    if cfg.out.contact_sheet:
        sheet = np.concatenate([np.concatenate(list(clip), axis=1) for clip in out], axis=0)
        write_contact_sheet(run_dir / "contact_sheet.png", sheet[None], columns=1, scale=4)
    record = [{"video": str(p.relative_to(run_dir)), "prompt": prompts[i], "seed": seeds[i],
               "guide_mode": cfg.guide.mode, "guide_indices": list(spec.indices), "ckpt": str(ckpt),
               "guide_files": dict(guide_paths(cfg.guide)), "guide_psnr_db": fidelity[i], "mp4_scale": scale,
               "truth": requests[i][2].truth.to_json() if requests[i][2] is not None else None}
              for i, p in enumerate(written)]
    atomic_write_text(run_dir / "samples.json", json.dumps(record, indent=2) + "\n")
    log.info("wrote %d video(s) to %s; guide PSNR (dB) per clip and frame: %s", len(written), run_dir / "videos",
             fidelity)
    return written


def run(cfg: DictConfig) -> None:
    run_task(cfg, GROUPS, infer)
