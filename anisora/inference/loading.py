"""Loading a trained method from a Lightning checkpoint for sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError


@dataclass
class LoadedModel:
    backbone: BackboneAdapter
    hparams: dict[str, Any]
    data: dict[str, Any]  # the training data config: num_frames, height, width (and world settings)
    path: Path


def read_hparams(path: Path) -> dict[str, Any]:
    """The configs saved in a checkpoint, without building anything."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as ex:  # a truncated or foreign file
        raise ConfigError("ckpt", f"{path} is not a readable Lightning checkpoint ({type(ex).__name__})") from None
    hparams = ckpt.get("hyper_parameters")
    if not hparams or "model" not in hparams:
        raise ConfigError("ckpt", f"{path} has no anisora hyper-parameters (was it written by train.py?)")
    return dict(hparams)


def load_model(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Rebuild the method from its saved configs, load its weights, prefer EMA weights when present."""
    from anisora.methods.sft import SFTMethod

    method = SFTMethod.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    method.use_ema_weights()
    backbone = method.backbone.to(device=device, dtype=dtype).eval()
    hparams = dict(method.hparams)
    return LoadedModel(backbone=backbone, hparams=hparams, data=trained_data(hparams), path=path)


def trained_data(hparams: dict[str, Any]) -> dict[str, Any]:
    data = hparams.get("data")
    if not data or not all(k in data for k in ("num_frames", "height", "width")):
        raise ConfigError("ckpt", "checkpoint does not record its clip size (data.num_frames/height/width)")
    return dict(data)
