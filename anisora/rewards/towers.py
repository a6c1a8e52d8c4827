"""Vision and text towers of a learned reward model, from local transformers folders (never a hub download).

CLIP and SigLIP folders hold both towers (image and text features from one model); DINOv2 and ViT folders hold a
vision tower only, and take their prompts from a second CLIP/SigLIP folder or go without text. A tower rebuilt
from a checkpoint comes from its recorded config (`configs()`), so a trained reward model loads without the
folders it started from; its tokenizer files travel in the checkpoint too (`tokenizer_files`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anisora.config.errors import ConfigError
from anisora.rewards.pixels import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

#: model_type -> the (mean, std) its images are normalised with
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": (CLIP_MEAN, CLIP_STD), "siglip": ((0.5,) * 3, (0.5,) * 3), "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "vit": (IMAGENET_MEAN, IMAGENET_STD)}
VISION_TYPES = ("clip", "siglip", "dinov2", "vit")
TEXT_TYPES = ("clip", "siglip")


def check_model_folder(key: str, path: str, allowed: Sequence[str]) -> str:
    """The model_type of a local transformers folder, or a one-line ConfigError naming `key`."""
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        raise ConfigError(key, f"expected a local transformers folder with config.json; got {path}")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in allowed:
        raise ConfigError(key, f"expected a {' or '.join(allowed)} model; {path} holds {model_type!r}")
    return str(model_type)


def _model(path: str | None, config: dict[str, Any] | None) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel

    if config is not None:
        values = dict(config)
        return AutoModel.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
    return AutoModel.from_pretrained(str(Path(path).expanduser()))


def _pooled(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def image_size_of(model: torch.nn.Module) -> int:
    config = model.config
    return int(getattr(config, "vision_config", config).image_size)


def sample_frame_indices(count: int, num: int) -> list[int]:
    """`num` frames spread evenly over `count` (AnimeReward's arange(0, N, N/num) rule; repeats when count < num)."""
    if count >= num:
        return [int(i) for i in np.floor(np.arange(num) * (count / num))]
    return [int(round(i)) for i in np.linspace(0, count - 1, num)]


class Towers(torch.nn.Module):
    """Per-frame image features (N, D) and per-prompt text features (M, E) of the configured towers."""

    def __init__(self, vision: str | None, text: str | None = None, configs: dict[str, Any] | None = None,
                 tokenizer_files: dict[str, bytes] | None = None) -> None:
        super().__init__()
        if configs:  # rebuilt from a checkpoint: weights come with its state dict
            self.vision_type = configs["vision"]["model_type"]
            self.vision = _model(None, configs["vision"])
            self.shared_text = bool(configs["shared_text"])
            self.text = _model(None, configs["text"]) if configs.get("text") else None
            self.tokenizer = load_tokenizer_files(tokenizer_files) if tokenizer_files else None
        else:
            if not vision:
                raise ConfigError("method.vision", "expected a local CLIP, SigLIP, DINOv2 or ViT folder")
            self.vision_type = check_model_folder("method.vision", vision, VISION_TYPES)
            if text:
                check_model_folder("method.text", text, TEXT_TYPES)
            source = text or (vision if self.vision_type in TEXT_TYPES else None)
            self.shared_text = source == vision
            self.vision = _model(vision, None)
            self.text = _model(source, None) if source and not self.shared_text else None
            self.tokenizer = None
            if source:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(str(Path(source).expanduser()))
        self.image_size = image_size_of(self.vision)
        self.mean, self.std = NORMS[self.vision_type]
        with torch.no_grad():
            self.image_width = int(self.image_features(torch.zeros(1, 3, self.image_size, self.image_size)).shape[-1])
            self.text_width = int(self.text_features([""]).shape[-1]) if self.has_text else 0
        self.train()  # from_pretrained leaves eval mode; the scorer puts it back

    @property
    def has_text(self) -> bool:
        return self.shared_text or self.text is not None

    def configs(self) -> dict[str, Any]:
        """What rebuilds these towers without their folders (kept in the reward model's hyper-parameters)."""
        return {"vision": self.vision.config.to_dict(), "shared_text": self.shared_text,
                "text": None if self.text is None else self.text.config.to_dict()}

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels -> (N, D): CLIP/SigLIP image embeddings, DINOv2/ViT CLS tokens."""
        if self.vision_type in TEXT_TYPES:
            return _pooled(self.vision.get_image_features(pixel_values=pixels))
        return self.vision(pixel_values=pixels).last_hidden_state[:, 0]

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        model = self.vision if self.shared_text else self.text
        limit = min(int(self.tokenizer.model_max_length), int(getattr(model.config, "text_config",
                                                                      model.config).max_position_embeddings))
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=limit,
                                return_tensors="pt")
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _pooled(model.get_text_features(**inputs))

    def tokenizer_files(self) -> dict[str, bytes]:
        if self.tokenizer is None:
            return {}
        with tempfile.TemporaryDirectory() as folder:
            self.tokenizer.save_pretrained(folder)
            return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def load_tokenizer_files(files: dict[str, bytes]):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return AutoTokenizer.from_pretrained(folder)


def write_tiny_clip(folder: str | Path, width: int = 32, layers: int = 2, image_size: int = 32, patch: int = 8,
                    max_text: int = 128, seed: int = 0) -> Path:
    """A randomly initialised CLIP folder (model and a character-level tokenizer), for CPU tests and the tiny
    world's reward benchmark: no real weights exist offline, and the tiny world needs none."""
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=2)
    return write_random_clip(folder, dict(**tower, image_size=image_size, patch_size=patch),
                             dict(**tower, max_position_embeddings=max_text), width, seed)


def write_random_clip(folder: str | Path, vision: dict[str, Any], text: dict[str, Any], projection_dim: int,
                      seed: int = 0) -> Path:
    """A randomly initialised CLIP folder of any size (`vision` and `text` are CLIPVisionConfig and CLIPTextConfig
    fields) with a character-level tokenizer: real-size towers for speed and memory, where no weights exist."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = Path(folder)
    torch.manual_seed(seed)
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    text = dict(**text, vocab_size=len(vocab), bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                pad_token_id=len(vocab) - 1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=text.get("max_position_embeddings", 77)).save_pretrained(
        folder)
    return folder
