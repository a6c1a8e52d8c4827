"""VBench's model-based dimensions, computed natively from local weights (transformers `from_pretrained` on a
folder; never a hub download): the `vbench` package pins transformers 4.33 and cannot share this environment.

| dimension | weights (reward.*) | formula (VBench 0.1.5 / VBench++; c = max(0, cos)) |
|---|---|---|
| subject_consistency | dino (DINO ViT-B/16) | mean over t>0 of (max(0, cos(f_t, f_t-1)) + max(0, cos(f_t, f_0))) / 2 |
| background_consistency | clip (CLIP ViT-B/32) | the same rule on CLIP image features |
| aesthetic_quality | clip_large (CLIP ViT-L/14) + aesthetic_head (LAION linear) | mean_t head(normalised f_t) / 10 |
| i2v_subject | dino | 0.4 max_t c(g, f_t) + 0.3 mean_t c(f_t, f_t-1) + 0.3 min_t c(f_t, f_t-1); g: the guide |
| i2v_background | clip | the i2v_subject rule on CLIP features (VBench++ uses DreamSim: a documented substitute) |
| text_video_consistency | clip | mean_t cos(text, f_t) of CLIP (VBench's overall consistency: ViCLIP) |
| imaging_quality_clipiqa | clip | mean_t softmax(s cos(f_t, good), s cos(f_t, bad))[good]; s: CLIP's logit scale |

imaging_quality_clipiqa is a documented substitute for VBench's imaging quality (MUSIQ / 100, whose weights and
multi-scale transformer transformers does not carry): CLIP-IQA's zero-shot antonym-prompt score (Wang, Chan and
Loy, AAAI 2023; prompts "Good photo." and "Bad photo."), in [0, 1] like MUSIQ / 100, named apart so no report
passes it off as MUSIQ; VBench's Quality uses it in imaging quality's place. A dimension whose weights are not
configured is left out with a one-line notice naming the key to set; a configured path that is missing or holds
another model fails in one line when the scorer is built, before any video is read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anisora.config.errors import ConfigError
from anisora.rewards.base import Clip, Scorer
from anisora.rewards.pixels import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, to_pixels

log = logging.getLogger("anisora.rewards")


#: dimension -> the reward keys whose weights it needs
NEEDS: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino",),
    "i2v_subject": ("dino",),
    "background_consistency": ("clip",),
    "i2v_background": ("clip",),
    "text_video_consistency": ("clip",),
    "aesthetic_quality": ("clip_large", "aesthetic_head"),
    "imaging_quality_clipiqa": ("clip",),
}
#: CLIP-IQA's antonym prompt pair
IQA_PROMPTS = ("Good photo.", "Bad photo.")
#: reward key -> the transformers model_type values its folder may hold
MODEL_TYPES: dict[str, tuple[str, ...]] = {"dino": ("vit", "dinov2"), "clip": ("clip",), "clip_large": ("clip",)}


def consistency(features: torch.Tensor) -> float:
    """VBench's subject/background consistency of (T, D) frame features: mean over t>0 of the clamped cosine to
    the previous frame and to the first, averaged."""
    f = F.normalize(features.double(), dim=-1)
    if len(f) < 2:
        return math.nan
    previous = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return float(((previous + first) / 2).mean())


def i2v_consistency(guide: torch.Tensor, features: torch.Tensor) -> float:
    """VBench++'s I2V subject rule: 0.4 max_t c(guide, f_t) + 0.3 mean_t c(f_t, f_t-1) + 0.3 min_t c(f_t, f_t-1)."""
    f, g = F.normalize(features.double(), dim=-1), F.normalize(guide.double().reshape(1, -1), dim=-1)
    if len(f) < 2:
        return math.nan
    to_guide = (f * g).sum(-1).clamp(min=0)
    steps = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    return float(0.4 * to_guide.max() + 0.3 * steps.mean() + 0.3 * steps.min())


def clip_iqa(features: torch.Tensor, good: torch.Tensor, bad: torch.Tensor, scale: float) -> float:
    """CLIP-IQA of (T, D) frame features: the mean over frames of the softmax weight of the "good" prompt
    between the two prompts' scaled cosines."""
    f = F.normalize(features.double(), dim=-1)
    prompts = F.normalize(torch.stack([good.double().flatten(), bad.double().flatten()]), dim=-1)
    return float(torch.softmax(scale * f @ prompts.T, dim=-1)[:, 0].mean())


def _features(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def check_folder(key: str, path: str) -> None:
    """A transformers folder of an accepted model type, or a one-line ConfigError naming `reward.<key>`."""
    from anisora.rewards.towers import check_model_folder

    check_model_folder(f"reward.{key}", path, MODEL_TYPES[key])


def load_aesthetic_head(path: str, width: int) -> torch.nn.Linear:
    """The LAION aesthetic predictor's linear head (state dict weight (1, D), bias (1)) for D = `width`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("reward.aesthetic_head", f"file {path} does not exist")
    state = torch.load(file, map_location="cpu", weights_only=True)
    weight = state.get("weight") if isinstance(state, dict) else None
    if weight is None or tuple(weight.shape) != (1, width):
        got = tuple(weight.shape) if weight is not None else sorted(state)[:4] if isinstance(state, dict) else state
        raise ConfigError("reward.aesthetic_head", f"expected a Linear({width}, 1) state dict (weight, bias); "
                                                   f"got {got}")
    head = torch.nn.Linear(width, 1)
    head.load_state_dict({"weight": weight, "bias": state.get("bias", torch.zeros(1))})
    return head


class VBenchScorer(Scorer):
    """The model-based dimensions whose weights are configured; see the module table."""

    def __init__(self, dino: str | None, clip: str | None, clip_large: str | None, aesthetic_head: str | None,
                 device: torch.device | str, batch_frames: int) -> None:
        paths = {"dino": dino, "clip": clip, "clip_large": clip_large, "aesthetic_head": aesthetic_head}
        for key in ("dino", "clip", "clip_large"):
            if paths[key]:
                check_folder(key, paths[key])
        self.device, self.batch = torch.device(device), batch_frames
        self.dimensions = tuple(d for d, keys in NEEDS.items() if all(paths[k] for k in keys))
        for d, keys in NEEDS.items():
            if d not in self.dimensions:
                log.info("%s left out: set %s", d, " and ".join(f"reward.{k}=PATH" for k in keys if not paths[k]))
        self.higher_is_better = self.dimensions
        from transformers import AutoModel, CLIPModel, CLIPTokenizer

        self.dino = AutoModel.from_pretrained(dino).to(self.device).eval() if dino else None
        self.clip = CLIPModel.from_pretrained(clip).to(self.device).eval() if clip else None
        self.tokenizer = CLIPTokenizer.from_pretrained(clip) if clip else None
        # CLIP-IQA's two prompts are the same for every clip: encoded once here
        self.iqa_prompts = [self.text_features(p) for p in IQA_PROMPTS] if clip else None
        self.clip_large, self.head = None, None
        if "aesthetic_quality" in self.dimensions:
            self.clip_large = CLIPModel.from_pretrained(clip_large).to(self.device).eval()
            self.head = load_aesthetic_head(aesthetic_head, self.clip_large.config.projection_dim).to(self.device)

    @torch.no_grad()
    def _batched(self, fn, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(pixels[i : i + self.batch].to(self.device)).float().cpu()
                          for i in range(0, len(pixels), self.batch)])

    def dino_features(self, frames: np.ndarray) -> torch.Tensor:
        """The CLS token after the final norm (what DINO's own forward returns), shorter side at the tower's image
        size (224 for DINO ViT-B/16, as VBench), aspect ratio kept."""
        pixels = to_pixels(frames, self.dino.config.image_size, IMAGENET_MEAN, IMAGENET_STD, crop=False)
        return self._batched(lambda x: self.dino(pixel_values=x, interpolate_pos_encoding=True)
                             .last_hidden_state[:, 0], pixels)

    def clip_features(self, model, frames: np.ndarray) -> torch.Tensor:
        pixels = to_pixels(frames, model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD, crop=True)
        return self._batched(lambda x: _features(model.get_image_features(pixel_values=x)), pixels)

    @torch.no_grad()
    def text_features(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt")
        return _features(self.clip.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()})).float().cpu()

    def score_one(self, clip: Clip) -> dict[str, float]:
        frames = np.asarray(clip.frames)
        guide = clip.guide_frames[:1] if clip.guide_frames is not None and clip.guide_indices else None
        out: dict[str, float] = {}
        if self.dino is not None:
            feats = self.dino_features(frames if guide is None else np.concatenate([guide, frames]))
            g, feats = (None, feats) if guide is None else (feats[0], feats[1:])
            out["subject_consistency"] = consistency(feats)
            out["i2v_subject"] = math.nan if g is None else i2v_consistency(g, feats)
        if self.clip is not None:
            feats = self.clip_features(self.clip, frames if guide is None else np.concatenate([guide, frames]))
            g, feats = (None, feats) if guide is None else (feats[0], feats[1:])
            out["background_consistency"] = consistency(feats)
            out["i2v_background"] = math.nan if g is None else i2v_consistency(g, feats)
            out["text_video_consistency"] = math.nan if not clip.prompt else float(
                (F.normalize(feats, dim=-1) @ F.normalize(self.text_features(clip.prompt), dim=-1).T).mean())
            scale = float(self.clip.logit_scale.detach().exp())
            out["imaging_quality_clipiqa"] = clip_iqa(feats, *self.iqa_prompts, scale)
        if self.head is not None:
            feats = F.normalize(self.clip_features(self.clip_large, frames), dim=-1)
            with torch.no_grad():
                out["aesthetic_quality"] = float(self.head(feats.to(self.device)).float().mean()) / 10.0
        return {d: out[d] for d in self.dimensions}

    def score(self, clips: Sequence[Clip]) -> list[dict[str, float]]:
        return [self.score_one(c) for c in clips]
