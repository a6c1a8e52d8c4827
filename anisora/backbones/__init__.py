"""Backbone adapters: one module per model family; `build_backbone` turns a model config into one."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate

from anisora.backbones.base import BackboneAdapter, Conditioning
from anisora.backbones.families import check_folder, latent_grid, one_guide_per_slot
from anisora.backbones.memory import check_model_config
from anisora.backbones.specs import NON_NETWORK_KEYS

__all__ = ["BackboneAdapter", "Conditioning", "build_backbone", "backbone_kwargs", "check_folder",
           "check_model_config", "latent_grid", "load_pretrained", "one_guide_per_slot", "NON_NETWORK_KEYS"]


def backbone_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model_cfg.items() if k not in NON_NETWORK_KEYS}


def build_backbone(model_cfg: dict[str, Any], dtype: torch.dtype | None = None) -> BackboneAdapter:
    """Instantiate the adapter named by the config's `_target_` (a plain dict, already validated), with LoRA
    adapters on its denoiser when `lora.rank` > 0. `dtype`: what the DiT and encoders are built or loaded in
    (None: the builder's fp32); a LoRA base that never trains can go straight to bf16."""
    from anisora.backbones.lora import add_lora

    extra = {} if dtype is None else {"dtype": dtype}
    backbone = instantiate(backbone_kwargs(model_cfg), _convert_="all", **extra)
    set_objective(backbone, model_cfg)
    add_lora(backbone.denoiser, model_cfg.get("lora"), int(model_cfg.get("init_seed", 0)))
    return backbone


def set_objective(backbone: BackboneAdapter, model_cfg: dict[str, Any]) -> None:
    """The objective object of `model.objective` (a v-prediction model keeps its own DDPM schedule)."""
    from anisora.diffusion.objectives import build_objective

    if model_cfg.get("objective") is not None:
        backbone.objective = build_objective(model_cfg["objective"], getattr(backbone, "noise_schedule", None))


def load_pretrained(model_cfg: dict[str, Any], folder: str, dtype: torch.dtype) -> BackboneAdapter:
    """A model family's weights from a diffusers-format folder, loaded straight into `dtype`."""
    check_folder(model_cfg, folder)
    values = backbone_kwargs(model_cfg)
    values["ckpt"] = folder
    backbone = instantiate(values, _convert_="all", dtype=dtype)
    set_objective(backbone, model_cfg)
    return backbone
