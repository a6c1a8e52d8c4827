"""Model hooks: RAFT flow, a text detector, an aesthetic predictor, a captioning model.

None of them ship with weights. Each is off until its weights path is set; the path (and the factory
that builds the model from it, "package.module:factory") is checked before any work starts, and each
worker process builds a model once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anisora.config.errors import ConfigError


@dataclass
class Models:
    flow: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    text: Callable[[np.ndarray], float] | None = None
    aesthetic: Callable[[np.ndarray], float] | None = None
    caption: Callable[[np.ndarray], str] | None = None


def import_factory(spec: str, key: str) -> Callable[[str], Any]:
    """"package.module:factory" -> the factory; a one-line ConfigError naming `key` otherwise."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(key, f"expected 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as ex:
        raise ConfigError(key, f"cannot import {spec}: {' '.join(str(ex).split())}") from None
    if not callable(factory):
        raise ConfigError(key, f"{spec} is not callable")
    return factory


def check_weights_hook(weights: str | None, module: str | None, prefix: str, weights_key: str = "weights",
                       module_key: str = "module") -> None:
    """A hook's weights must exist and name their factory; a factory alone is a mistake too."""
    if weights is None:
        if module is not None:
            raise ConfigError(f"{prefix}.{module_key}", f"set {prefix}.{weights_key} too (the factory gets its path)")
        return
    if not Path(weights).expanduser().exists():
        raise ConfigError(f"{prefix}.{weights_key}", f"{weights} does not exist")
    if module is None:
        raise ConfigError(f"{prefix}.{module_key}",
                          f"required with {prefix}.{weights_key}: 'package.module:factory', factory(weights) -> model")
    import_factory(module, f"{prefix}.{module_key}")


def check_caption_model(path: str | None) -> None:
    if path is None:
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError("caption.model", f"{path} is not a folder (expected a local transformers model folder)")
    if not (folder / "config.json").is_file():
        raise ConfigError("caption.model", f"{path} has no config.json (expected a local transformers model folder)")


def caption_model(path: str, prompt: str, max_new_tokens: int) -> Callable[[np.ndarray], str]:
    """A local transformers vision-language model as frame -> one-line caption (no network)."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()

    def describe(frame: np.ndarray) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[Image.fromarray(frame)], text=text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return " ".join(processor.decode(new, skip_special_tokens=True).split())

    return describe


_CACHE: dict[tuple, Models] = {}


def load_models(s: Any) -> Models:
    """The hooks a worker's settings ask for, built once per process."""
    key = (s.raft_weights, s.raft_module, s.text_weights, s.text_module, s.aesthetic_weights, s.aesthetic_module,
           s.caption_model, s.caption_prompt, s.caption_tokens)
    if key not in _CACHE:
        models = Models()
        if s.raft_weights:
            models.flow = import_factory(s.raft_module, "motion.raft_module")(s.raft_weights)
        if s.text_weights:
            models.text = import_factory(s.text_module, "text.module")(s.text_weights)
        if s.aesthetic_weights:
            models.aesthetic = import_factory(s.aesthetic_module, "aesthetic.module")(s.aesthetic_weights)
        if s.caption_model:
            models.caption = caption_model(s.caption_model, s.caption_prompt, s.caption_tokens)
        _CACHE[key] = models
    return _CACHE[key]
