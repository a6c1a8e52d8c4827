"""Loading a trained method from a Lightning checkpoint for sampling: whatever method class wrote it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError

DEFAULT_METHOD = "anisora.methods.sft.SFTMethod"  # checkpoints written before the class was recorded


@dataclass
class LoadedModel:
    backbone: BackboneAdapter
    hparams: dict[str, Any]
    data: dict[str, Any]  # the training data config: num_frames, height, width (and world settings)
    path: Path


def read_checkpoint_head(path: Path) -> dict[str, Any]:
    """The checkpoint's dictionary, memory-mapped (nothing is built)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as ex:  # a truncated or foreign file
        raise ConfigError("ckpt", f"{path} is not a readable Lightning checkpoint ({type(ex).__name__})") from None


def read_hparams(path: Path) -> dict[str, Any]:
    """The configs saved in a checkpoint, without building anything."""
    hparams = read_checkpoint_head(path).get("hyper_parameters")
    if not hparams or "model" not in hparams:
        raise ConfigError("ckpt", f"{path} has no anisora hyper-parameters (was it written by train.py?)")
    return dict(hparams)


def method_class(path: Path, name: str | None = None):
    """The LightningModule class that wrote the checkpoint (recorded by DiffusionMethod.on_save_checkpoint)."""
    name = name or read_checkpoint_head(path).get("method_class") or DEFAULT_METHOD
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ConfigError("ckpt", f"{path} was written by {name}, which cannot be imported here") from None


def load_method(path: Path):
    """The method as it was saved (every role's weights), on the CPU."""
    return method_class(path).load_from_checkpoint(path, map_location="cpu", weights_only=False)


def load_model(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Rebuild the method from its saved configs, load its weights, sample with its sampling role (the EMA when
    present)."""
    method = load_method(path)
    method.prepare_for_inference()
    backbone = method.backbone.to(device=device, dtype=dtype).eval()
    hparams = dict(method.hparams)
    return LoadedModel(backbone=backbone, hparams=hparams, data=trained_data(hparams), path=path)


def trained_data(hparams: dict[str, Any]) -> dict[str, Any]:
    data = hparams.get("data")
    if not data or not all(k in data for k in ("num_frames", "height", "width")):
        raise ConfigError("ckpt", "checkpoint does not record its clip size (data.num_frames/height/width)")
    return dict(data)
