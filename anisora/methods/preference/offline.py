"""Batches of a pairs file as a round's samples, for the methods that learn from scored videos (DPO, GAPO, RWR)."""

from __future__ import annotations

from typing import Any

import torch

from anisora.methods.preference.rounds import RoundSamples


class OfflinePairs:
    """Mixin of a PreferenceMethod: each pair is a group of two (winner, loser), each video guided by its own first
    frame; both videos of a pair share the pair's seed (same noise and level in the updates). Under data
    parallelism each rank takes its share of the round's pairs, and their scores are gathered like rollouts'."""

    @torch.no_grad()
    def offline_samples(self, batch: dict[str, Any]) -> RoundSamples:
        batch = self.local_prompts(batch)
        n = len(batch["caption"])
        video = torch.stack([batch["winner"], batch["loser"]], dim=1).flatten(0, 1).to(self.device)  # w0 l0 w1 ...
        captions = [c for c in batch["caption"] for _ in range(2)]
        guide, mask = self.guide_pairs(video)
        cond = self.backbone.conditioning(captions, guide, mask)
        latents = self.backbone.encode_video(video)
        rewards = torch.stack([batch["w_score"], batch["l_score"]], dim=1).flatten().float()
        seeds = [s for s in batch["seed"] for _ in range(2)]
        table = self.gather_round([i for i in batch["index"] for _ in range(2)], [0, 1] * n, rewards.tolist(), [])
        gap = table.rewards[0::2] - table.rewards[1::2]  # the round's pairs, every rank's
        self.log("pairs/score_gap", float(gap.mean()), batch_size=len(gap))
        return RoundSamples(latents, cond, None, seeds, table.rewards[table.local], [], 2, table=table)

