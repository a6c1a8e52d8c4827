"""A trained reward model (method=reward_model) as a scorer: one dimension per head, in the heads' units."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from anisora.config.errors import ConfigError
from anisora.rewards.base import Clip, Scorer


def check_reward_checkpoint(path: str | None) -> Path:
    """A train.py checkpoint written by the reward model, or a one-line ConfigError naming reward.ckpt."""
    from anisora.inference.loading import read_checkpoint_head

    if not path:
        raise ConfigError("reward.ckpt", "expected a method=reward_model checkpoint (train.py method=reward_model "
                                         "writes outputs/train/<run>/checkpoints/last.ckpt)")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("reward.ckpt", f"{file} does not exist")
    try:
        written_by = str(read_checkpoint_head(file).get("method_class", ""))
    except ConfigError as ex:
        raise ConfigError("reward.ckpt", str(ex).removeprefix(f"{ex.key}: ")) from None
    if not written_by.endswith("RewardModelMethod"):
        raise ConfigError("reward.ckpt", f"{file} is a {written_by or 'diffusion'} checkpoint, not a reward model's")
    return file


class LearnedScorer(Scorer):
    """Scores clips with a trained reward model; the guide is a clip's first guide frame, the prompt its prompt."""

    def __init__(self, ckpt: str | None, device: torch.device | str, batch_clips: int = 8) -> None:
        from anisora.methods.reward_model import RewardModelMethod

        file = check_reward_checkpoint(ckpt)
        self._use(RewardModelMethod.load(str(file)).net, device, batch_clips)

    @classmethod
    def of(cls, net: torch.nn.Module, device: torch.device | str, batch_clips: int = 8) -> LearnedScorer:
        """A scorer over a reward network in hand (a benchmark's real-size random towers), no checkpoint."""
        scorer = cls.__new__(cls)
        scorer._use(net, device, batch_clips)
        return scorer

    def _use(self, net: torch.nn.Module, device: torch.device | str, batch_clips: int) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch = batch_clips
        self.dimensions = self.higher_is_better = self.net.dimensions

    @torch.no_grad()
    def score(self, clips: Sequence[Clip]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for start in range(0, len(clips), self.batch):
            part = clips[start : start + self.batch]
            guides = [self.net.guide_pixels(c.guide_frames[0] if c.guide_frames is not None and c.guide_indices
                                            else None) for c in part]
            pixels = torch.stack([self.net.pixels(c.frames) for c in part]).to(self.device)
            rewards = self.net(pixels, [c.prompt for c in part], torch.stack([g for g, _ in guides]).to(self.device),
                               torch.tensor([h for _, h in guides], device=self.device))
            for row in self.net.scores(rewards).float().cpu().tolist():
                out.append(dict(zip(self.dimensions, row, strict=True)))
        return out
