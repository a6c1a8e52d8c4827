"""Backbone adapters: one module per model family; `build_backbone` turns a model config into one."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate

from anisora.backbones.base import BackboneAdapter, Conditioning

__all__ = ["BackboneAdapter", "Conditioning", "build_backbone", "backbone_kwargs", "latent_grid"]

# Keys of a model config that describe training, not the network.
NON_NETWORK_KEYS = ("kind", "objective")


def backbone_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model_cfg.items() if k not in NON_NETWORK_KEYS}


def build_backbone(model_cfg: dict[str, Any]) -> BackboneAdapter:
    """Instantiate the adapter named by the config's `_target_` (a plain dict, already validated)."""
    return instantiate(backbone_kwargs(model_cfg), _convert_="all")


def latent_grid(model_cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(temporal factor, spatial factor, patch) of a model config, known before anything is built."""
    kind = model_cfg.get("kind")
    if kind == "tiny":
        return 4, int(model_cfg["spatial_factor"]), 2
    return 4, 8, 2
