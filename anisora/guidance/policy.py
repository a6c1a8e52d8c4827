"""The training-time draw of guide frames and text dropout (AniSora V1's policy by default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuideDraw:
    frames: tuple[int, ...]  # pixel frame indices kept as guides (empty = unconditional)
    drop_text: bool
    region: tuple[float, float, float, float] | None = None  # kept rectangle (x0, y0, x1, y1) as fractions


@dataclass(frozen=True)
class TrainGuidePolicy:
    """Main guide: a random frame with p_random_main, else the first; a second random guide with
    p_second; all guides dropped with p_drop_guides; the caption dropped with p_drop_text."""

    p_random_main: float = 0.5
    p_second: float = 0.5
    p_drop_guides: float = 0.05
    p_drop_text: float = 0.1
    p_region: float = 0.0  # keep only a random rectangle (30-90 % of each side) of the guide frames

    def draw(self, num_frames: int, generator: torch.Generator) -> GuideDraw:
        u = torch.rand(5, generator=generator).tolist()
        idx = torch.randint(0, num_frames, (2,), generator=generator).tolist()
        frames = [idx[0] if u[0] < self.p_random_main else 0]
        if u[1] < self.p_second:
            frames.append(idx[1])
        if u[2] < self.p_drop_guides:
            frames = []
        region = None
        if self.p_region > 0 and u[4] < self.p_region and frames:  # extra draws only when used: old runs repeat
            w, h, x, y = torch.rand(4, generator=generator).tolist()
            w, h = 0.3 + 0.6 * w, 0.3 + 0.6 * h
            region = (x * (1 - w), y * (1 - h), x * (1 - w) + w, y * (1 - h) + h)
        return GuideDraw(frames=tuple(sorted(set(frames))), drop_text=u[3] < self.p_drop_text, region=region)

    def draw_stored(self, modes: Sequence[str], generator: torch.Generator) -> tuple[str | None, bool]:
        """For precomputed conditioning (shards): no guide (None) with p_drop_guides or when nothing is stored,
        else one of the stored guide modes, uniformly; the caption is dropped with p_drop_text."""
        u = torch.rand(2, generator=generator).tolist()
        pick = int(torch.randint(0, max(len(modes), 1), (1,), generator=generator))
        mode = None if u[0] < self.p_drop_guides or not modes else modes[pick]
        return mode, u[1] < self.p_drop_text
