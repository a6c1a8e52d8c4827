"""Checks a model config can be built here, before anything is built or any run folder written.

Two refusals, each one line: a real-size model (one whose schema has `init`) without weights unless
`model.init=random` says random weights are meant; and a model whose weights alone exceed the device's
memory (an oversized CPU process is otherwise killed, exit 137, with no message).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from anisora.accelerators import devices
from anisora.backbones.families import family_of
from anisora.config.errors import ConfigError

PICKLED_BYTES_PER_PARAMETER = 4  # .bin/.pt weights: counted as fp32 (an estimate that never over-refuses)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the builders' log lines and library warnings while counting (refusals stay one line)."""
    import warnings

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def meta_backbone(model_cfg: Mapping[str, Any]):
    """The config's architecture with random init on the meta device: the family's own builder runs, nothing
    is allocated."""
    from hydra.utils import instantiate

    from anisora.backbones import backbone_kwargs

    values = {k: v for k, v in backbone_kwargs(dict(model_cfg)).items() if k not in ("ckpt", "transformer")}
    with quiet(), torch.device("meta"):
        return instantiate(values, _convert_="all")


def built_parameter_count(model_cfg: Mapping[str, Any]) -> int:
    """Parameters of the config's architecture (every part: DiT, VAE, encoders), counted on the meta device."""
    return sum(p.numel() for p in meta_backbone(model_cfg).parameters())


def denoiser_parameter_count(model_cfg: Mapping[str, Any]) -> int:
    """Parameters of the denoiser alone (what a role copy duplicates), counted on the meta device."""
    return sum(p.numel() for p in meta_backbone(model_cfg).denoiser.parameters())


def safetensors_parameter_count(path: Path) -> int:
    """Elements in a safetensors file, from its header alone."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def folder_parameter_count(model_cfg: Mapping[str, Any], folder: Path) -> int:
    """Parameters loading `folder` brings in, from its weight files (no tensor is read)."""
    files = family_of(model_cfg).weight_files(model_cfg, folder)
    return sum(safetensors_parameter_count(p) if p.suffix == ".safetensors"
               else p.stat().st_size // PICKLED_BYTES_PER_PARAMETER for p in files)


def parameter_count(model_cfg: Mapping[str, Any]) -> int:
    """The model's parameters: its folder's (`ckpt`) when it has one, else its architecture's."""
    ckpt = model_cfg.get("ckpt")
    if ckpt and Path(ckpt).expanduser().is_dir():
        return folder_parameter_count(model_cfg, Path(ckpt).expanduser())
    return built_parameter_count(model_cfg)


def weight_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype the weights are held in on `device`: a lower bound of what any task keeps (mixed precision
    training holds fp32 weights plus gradients and optimizer state), so a refusal is never wrong."""
    return devices.inference_dtype(device, precision)


def check_weights_given(model_cfg: Mapping[str, Any], prefix: str = "model") -> None:
    """A model with pretrained weights (its schema has `init`) needs `ckpt` unless `init=random`."""
    init = model_cfg.get("init")
    if init is None:
        return
    if init == "random" and model_cfg.get("ckpt"):
        raise ConfigError(f"{prefix}.init", f"random builds random weights, but {prefix}.ckpt names weights; "
                                            f"drop one of them")
    if init != "random" and not model_cfg.get("ckpt"):
        raise ConfigError(f"{prefix}.ckpt", f"this real-size model needs its weights: set {prefix}.ckpt=FOLDER "
                                            f"(diffusers format), or {prefix}.init=random for random weights")


def check_fits(model_cfg: Mapping[str, Any], device: torch.device, precision: str, prefix: str = "model") -> None:
    """Refuse in one line a model whose weights alone exceed the device's memory."""
    have = devices.device_memory_bytes(device)
    if have is None:
        return
    dtype = weight_dtype(device, precision)
    count = parameter_count(model_cfg)
    need = count * dtype.itemsize
    if need <= have:
        return
    where = "host RAM" if device.type == "cpu" else f"{device.type} memory"
    raise ConfigError(prefix, f"{model_cfg.get('kind')} model of {count / 1e9:.2f}B parameters needs about "
                              f"{need / 2**30:.1f} GiB for its {str(dtype).removeprefix('torch.')} weights alone; "
                              f"this {device.type} has {have / 2**30:.1f} GiB of {where}")


def check_model_config(model_cfg: Mapping[str, Any], accelerator_name: str, precision: str,
                       prefix: str = "model") -> None:
    """Both checks, before any model is built: weights are given (or random init is asked for) and fit."""
    check_weights_given(model_cfg, prefix)
    check_fits(model_cfg, devices.resolve_device(accelerator_name), precision, prefix)


def check_roles_fit(model_cfg: Mapping[str, Any], accelerator_name: str, precision: str, trainable_copies: int,
                    frozen_copies: int, shards: int = 1, key: str = "method.roles_mode") -> None:
    """Refuse in one line full role copies (`roles_mode=full`) whose model state cannot fit: 16 bytes per
    trainable parameter (fp32 weight, gradient and two Adam moments) and the weight dtype per frozen one,
    divided over `shards` devices."""
    device = devices.resolve_device(accelerator_name)
    have = devices.device_memory_bytes(device)
    if have is None or device.type == "cpu":
        return
    count = denoiser_parameter_count(model_cfg)
    need = count * (16 * trainable_copies + weight_dtype(device, precision).itemsize * frozen_copies) / max(1, shards)
    if need <= have:
        return
    raise ConfigError(key, f"full keeps {trainable_copies} trainable and {frozen_copies} frozen copies of a "
                           f"{count / 1e9:.2f}B denoiser: about {need / 2**30:.0f} GiB of model state per device, this "
                           f"{device.type} has {have / 2**30:.0f} GiB; use roles_mode=lora_shared_base or shard over "
                           "more devices")
