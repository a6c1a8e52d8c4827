"""anisora-data encode: a manifest's kept clips -> webdataset shards, with one backbone's encoders.

    anisora-data encode manifest=/data/curated/manifest.jsonl model=wan14b out=/data/shards
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \
        -m anisora.tasks.data_cli encode ...               # every node; shard k goes to global rank k % 16
    srun anisora-data encode ...                           # SLURM: one task per GPU, ranks from SLURM_PROCID
    RANK=1 WORLD_SIZE=8 anisora-data encode ...        # by hand: one process per GPU; shard k goes to rank k % 8

Under a cluster launch (torchrun, SLURM) the ranks meet once at the end, and global rank 0 writes dataset.json
counting every rank's shards.

Everything that can be checked (manifest, output folder, clip size, guide modes, rank) is checked before
any model is built; a rerun skips the shards already complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from anisora.accelerators.cluster import cluster_environment
from anisora.accelerators.devices import inference_dtype, local_device, set_num_threads
from anisora.accelerators.distributed import close_process_group, init_process_group, launched_place
from anisora.backbones import BackboneAdapter, build_backbone, check_model_config, latent_grid, load_pretrained
from anisora.backbones.base import check_clip_shape
from anisora.config.errors import ConfigError
from anisora.data.clip_source import ClipFormat
from anisora.data.encode import EncodeSettings, check_guides, encode_shards, write_dataset_info
from anisora.data.manifest import read_manifest
from anisora.tasks.common import environment_defaults, run_task, write_run_record

log = logging.getLogger("anisora.encode")
GROUPS = ["model", "accelerator", "paths"]
STORED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rank_and_world(cfg: DictConfig) -> tuple[int, int]:
    """From the config, else the cluster launcher's global rank and world size (torchrun, SLURM), else
    RANK / WORLD_SIZE set by hand, else a single process."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value and not value.isdigit():
            raise ConfigError(name.lower(), f"${name}={value!r} is not an integer")
    place = launched_place()
    world = cfg.world_size if cfg.world_size is not None else place.world_size
    rank = cfg.rank if cfg.rank is not None else place.rank
    if not 0 <= rank < world:
        raise ConfigError("rank", f"must be in 0..{world - 1} for world_size {world}; got {rank}")
    return rank, world


def stored_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return STORED_DTYPES[name]


def build_encoders(model: dict[str, Any], device: torch.device, dtype: torch.dtype) -> BackboneAdapter:
    """The backbone with everything but the denoiser on `device` (the DiT is never needed here)."""
    backbone = load_pretrained(model, model["ckpt"], dtype) if model.get("ckpt") else build_backbone(model)
    for module in backbone.encoding_modules():
        module.to(device)
    return backbone.eval()


def encode(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    if not cfg.manifest:
        raise ConfigError("manifest", "give the manifest to encode: manifest=/data/curated/manifest.jsonl")
    if not cfg.out:
        raise ConfigError("out", "give the output folder for the shards: out=/data/shards")
    records = list(read_manifest(cfg.manifest, kept_only=True))
    if not records:
        raise ConfigError("manifest", f"{cfg.manifest} has no kept clips")
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder")
    guides = check_guides(list(cfg.guides))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    try:
        check_clip_shape(cfg.num_frames, cfg.height, cfg.width, *latent_grid(model), prefix="encode")
    except ConfigError as ex:  # the clip keys are top-level here
        key = ex.key.removeprefix("encode.")
        raise ConfigError(key, str(ex).removeprefix(f"{ex.key}: ")) from None
    check_model_config(model, cfg.accelerator.name, cfg.accelerator.precision)
    rank, world = rank_and_world(cfg)
    launched = cluster_environment() is not None and world > 1 and cfg.rank is None and cfg.world_size is None
    local_rank = launched_place().local_rank if launched else int(os.environ.get("LOCAL_RANK", rank))
    device = local_device(cfg.accelerator.name, local_rank)
    settings = EncodeSettings(
        fmt=ClipFormat(cfg.num_frames, cfg.height, cfg.width, cfg.fps), guides=guides,
        dtype=stored_dtype(cfg.dtype, device), max_samples=cfg.shard_max_samples, max_bytes=cfg.shard_max_bytes,
        seed=cfg.seed)

    environment_defaults()
    write_run_record(cfg, run_dir)
    set_num_threads(cfg.accelerator.num_threads)
    backbone = build_encoders(model, device, inference_dtype(device, cfg.accelerator.precision))
    info = encode_shards(backbone, records, out, settings, rank, world, model_config=model,
                         show_progress=cfg.progress)
    if launched:  # every rank has written its shards and its dataset.json: rank 0 writes the one that counts all
        init_process_group(device)
        dist.barrier()
        if rank == 0:
            info = write_dataset_info(out, info)
        close_process_group()
    log.info("%s: %d of %d shards complete, %d samples, %d clips skipped", out, info["shards_complete"],
             info["num_shards"], info["samples"], info["skipped_clips"])
    return info


def run(cfg: DictConfig) -> None:
    """Entry point of `anisora-data encode`."""
    run_task(cfg, GROUPS, encode)
