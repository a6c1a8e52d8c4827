"""Backbone adapters: one module per model family; `build_backbone` turns a model config into one."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate

from anisora.backbones.base import BackboneAdapter, Conditioning
from anisora.config.errors import ConfigError

__all__ = ["BackboneAdapter", "Conditioning", "build_backbone", "backbone_kwargs", "latent_grid", "load_pretrained"]

# Keys of a model config that describe training, not the network.
NON_NETWORK_KEYS = ("kind", "objective", "native", "offload_encoders", "lora")


def backbone_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model_cfg.items() if k not in NON_NETWORK_KEYS}


def build_backbone(model_cfg: dict[str, Any]) -> BackboneAdapter:
    """Instantiate the adapter named by the config's `_target_` (a plain dict, already validated), with LoRA
    adapters on its denoiser when `lora.rank` > 0."""
    from anisora.backbones.lora import add_lora

    backbone = instantiate(backbone_kwargs(model_cfg), _convert_="all")
    add_lora(backbone.denoiser, model_cfg.get("lora"), int(model_cfg.get("init_seed", 0)))
    return backbone


def load_pretrained(model_cfg: dict[str, Any], folder: str, dtype: torch.dtype) -> BackboneAdapter:
    """A model family's weights from a diffusers-format folder, loaded straight into `dtype`."""
    if model_cfg.get("kind") == "tiny":
        raise ConfigError("ckpt", f"{folder} is a folder; name its model family (e.g. model=wan14b, model=wan1.3b)")
    values = backbone_kwargs(model_cfg)
    values["ckpt"] = folder
    return instantiate(values, _convert_="all", dtype=dtype)


def latent_grid(model_cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(temporal factor, spatial factor, patch) of a model config, known before anything is built."""
    kind = model_cfg.get("kind")
    if kind == "tiny":
        return 4, int(model_cfg["spatial_factor"]), 2
    return 4, 8, 2  # Wan2.1 and CogVideoX: VAE x4 in time, x8 in space; DiT patch 2x2
