"""The learned reward network: AnimeReward-style heads (one per dimension) over a vision tower and a text tower.

Each clip is `num_frames` frames sampled evenly (AnimeReward's rule), centre-cropped and resized to the tower's
size; the per-frame features are pooled over time three ways (mean: appearance; mean |f[t+1] - f[t]|: how much
changes, which flicker and static clips get wrong; mean f[t+1] - f[t]: which way it changes, which a caption's
direction must match). With `pixel_motion`, a motion stream joins them: per pair of sampled frames, the mean
absolute pixel change at tower resolution (how strongly the picture flickers, how far the subject moved), which
per-frame tower features blur and VBench's flicker and dynamic degree read off pixels. The prompt's text
features enter as themselves and multiplied with the pooled video (text-video consistency), the guide image's
features as themselves, against the first frame and against every frame (image-video consistency: how far the
clip strays from its guide); a clip without a guide or prompt gets zeros and a flag. Each head reads the fused
vector.

Heads output standardised rewards r (the Bradley-Terry scale); `scores` maps them back to each dimension's units
with the training labels' mean and standard deviation, so a regression-trained head reports the label's value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from anisora.rewards.pixels import to_pixels
from anisora.rewards.towers import Towers, sample_frame_indices


def pixel_changes(pixels: torch.Tensor) -> torch.Tensor:
    """(N, T, C, H, W) -> (N, T - 1): the mean absolute change of every pixel from one sampled frame to the next."""
    return (pixels[:, 1:] - pixels[:, :-1]).abs().float().mean(dim=(2, 3, 4))


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(), nn.Linear(hidden, width_out))


class RewardNet(nn.Module):
    """(frames, prompts, guides) -> one standardised reward per dimension per clip."""

    def __init__(self, towers: Towers, dimensions: Sequence[str], num_frames: int, hidden: int,
                 score_mean: Sequence[float] | None = None, score_std: Sequence[float] | None = None,
                 score_min: Sequence[float] | None = None, score_max: Sequence[float] | None = None,
                 pixel_motion: bool = False) -> None:
        super().__init__()
        self.towers, self.dimensions, self.num_frames = towers, tuple(dimensions), int(num_frames)
        self.pixel_motion = bool(pixel_motion)
        width = towers.image_width
        self.video = _mlp(3 * width + (self.num_frames - 1 if self.pixel_motion else 0), hidden, hidden)
        self.text = _mlp(towers.text_width, hidden, hidden) if towers.has_text else None
        self.guide = _mlp(3 * width, hidden, hidden)
        fused = hidden * (4 if self.text is not None else 2) + 2  # + the guide and prompt flags
        self.heads = nn.ModuleDict({d: _mlp(fused, hidden, 1) for d in self.dimensions})
        count = len(self.dimensions)
        self.register_buffer("score_mean", torch.tensor(score_mean or [0.0] * count, dtype=torch.float32))
        self.register_buffer("score_std", torch.tensor(score_std or [1.0] * count, dtype=torch.float32))
        # the range the training scores spanned: a prediction outside it says no more than its end (a clip cannot be
        # more than fully colour-consistent), and clean clips tie where their true scores tie; from hparams
        self.register_buffer("score_min", torch.tensor(score_min or [-math.inf] * count, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("score_max", torch.tensor(score_max or [math.inf] * count, dtype=torch.float32),
                             persistent=False)

    # ----------------------------------------------------------------- inputs
    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (F, H, W, 3) -> normalised (num_frames, 3, S, S) of the evenly sampled frames."""
        picked = np.asarray(frames)[sample_frame_indices(len(frames), self.num_frames)]
        return to_pixels(picked, self.towers.image_size, self.towers.mean, self.towers.std, crop=True)

    def guide_pixels(self, guide: np.ndarray | None) -> tuple[torch.Tensor, bool]:
        """uint8 (H, W, 3) guide image -> normalised (3, S, S), and whether there was one."""
        size = self.towers.image_size
        if guide is None:
            return torch.zeros(3, size, size), False
        return to_pixels(np.asarray(guide)[None], size, self.towers.mean, self.towers.std, crop=True)[0], True

    # ----------------------------------------------------------------- forward
    def forward(self, pixels: torch.Tensor, prompts: Sequence[str], guide: torch.Tensor,
                has_guide: torch.Tensor) -> torch.Tensor:
        """pixels (N, T, 3, S, S), N prompts ("" = none), guide (N, 3, S, S), has_guide (N,) -> rewards (N, D)."""
        count, frames = pixels.shape[:2]
        feats = self.towers.image_features(pixels.flatten(0, 1)).float().view(count, frames, -1)
        steps = feats[:, 1:] - feats[:, :-1]
        pooled = [feats.mean(1), steps.abs().mean(1), steps.mean(1)]
        if self.pixel_motion:
            pooled.append(pixel_changes(pixels))
        video = self.video(torch.cat(pooled, dim=-1))
        flag = has_guide.float().view(count, 1)
        g = self.towers.image_features(guide).float()
        drift = (feats - g[:, None]).abs().mean(1)  # how far the frames stray from the guide (identity, colour)
        parts = [video, self.guide(torch.cat([g, feats[:, 0] - g, drift], dim=-1)) * flag, flag]
        if self.text is not None:
            has_text = torch.tensor([bool(p) for p in prompts], device=pixels.device).float().view(count, 1)
            text = self.text(self.towers.text_features(list(prompts)).float()) * has_text
            parts += [text, text * video, has_text]
        else:
            parts.append(torch.zeros_like(flag))
        fused = torch.cat(parts, dim=-1)
        return torch.cat([self.heads[d](fused) for d in self.dimensions], dim=-1)

    def scores(self, rewards: torch.Tensor) -> torch.Tensor:
        """Standardised rewards -> each dimension's units, inside the range the training scores spanned."""
        return torch.maximum(torch.minimum(self.score_mean + self.score_std * rewards, self.score_max), self.score_min)

    def standardised_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training scores' range on the standardised scale the heads output (what the regression is censored
        at, so training and the clamped scores agree)."""
        return (self.score_min - self.score_mean) / self.score_std, (self.score_max - self.score_mean) / self.score_std
