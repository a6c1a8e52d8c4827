"""DPO and GAPO: one pairwise module (papers-and-users.md section 2.3, next-batch.md section 2.1).

The winner and the loser of a pair are noised with the same noise at the same level; the policy's and the
reference's per-sample denoising losses on the objective's own target (velocity for flow matching: Flow-DPO;
v for v-prediction, which is AniSora's 1/(1 - abar)-weighted x0 loss: Diffusion-DPO) enter
`pairwise_preference_loss`. GAPO weights each pair by its score gap; DPO weights every pair by 1. With
`rl.guided_loss`, both losses are of the guided prediction uncond + g (cond - uncond) at the rollouts' guidance
scale: what the rollouts were sampled with, so a model that must sample with CFG learns what it samples. Online, each
group of K rollouts gives one pair, its best against its worst; offline, a pairs file gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anisora.backbones.base import Conditioning
from anisora.config.schema import PairwiseRLConfig
from anisora.diffusion.objectives import FlowMatching, Objective, VPrediction
from anisora.methods.preference.losses import gap_weight, pairwise_preference_loss
from anisora.methods.preference.offline import OfflinePairs
from anisora.methods.preference.rounds import PreferenceMethod, RoundSamples, take

#: the published beta of each objective's DPO (Flow-DPO on velocities; Diffusion-DPO / GAPO on eps or v)
PUBLISHED_BETA: tuple[tuple[type[Objective], float], ...] = ((FlowMatching, 100.0), (VPrediction, 5000.0))


def published_beta(objective: Objective) -> float:
    return next(beta for kind, beta in PUBLISHED_BETA if isinstance(objective, kind))


@dataclass
class Pairs:
    winner: torch.Tensor  # (P, C, T, h, w)
    loser: torch.Tensor
    cond: Conditioning  # (2P): the winners' rows, then the losers'
    seeds: list[int]  # per pair: the noise and level both of its videos share
    winner_score: torch.Tensor  # (P,)
    loser_score: torch.Tensor
    uncond: Conditioning | None = None  # (2P), as `cond`: the null-prompt rows when rollouts sampled with CFG

    def __len__(self) -> int:
        return len(self.seeds)


def best_against_worst(samples: RoundSamples, min_gap: float) -> Pairs | None:
    """One pair per group: its best sample against its worst, when their rewards differ by more than `min_gap`."""
    groups = samples.rewards.view(-1, samples.group_size)
    winners, losers = [], []
    for g, row in enumerate(groups):
        best, worst = int(row.argmax()), int(row.argmin())
        if float(row[best] - row[worst]) > min_gap:
            winners.append(g * samples.group_size + best)
            losers.append(g * samples.group_size + worst)
    if not winners:
        return None
    rows = winners + losers
    return Pairs(samples.latents[winners], samples.latents[losers], take(samples.cond, rows),
                 [samples.seeds[i] for i in winners], samples.rewards[winners], samples.rewards[losers],
                 take(samples.uncond, rows) if samples.uncond is not None else None)


class PairwiseMethod(OfflinePairs, PreferenceMethod):
    """DPO (`rl.weighting=none`) and GAPO (`rl.weighting=gap`) on pairs of rollouts or of a pairs file."""

    settings_class = PairwiseRLConfig

    @property
    def beta(self) -> float:
        beta = self.settings.beta
        return float(beta) if beta is not None else published_beta(self.objective)

    def pair_weight(self, pairs: Pairs) -> torch.Tensor | None:
        s = self.settings
        if s.weighting == "none":
            return None
        return gap_weight(pairs.winner_score, pairs.loser_score, s.gap_base, s.score_range)

    def pair_loss(self, pairs: Pairs, update: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The pairwise loss of one update: same noise and level for each pair's winner and loser."""
        n = len(pairs)
        terms = self.denoising_terms(torch.cat([pairs.winner, pairs.loser]), pairs.seeds * 2, update)
        guided = (pairs.uncond, self.rollout_spec().guidance_scale) if self.settings.guided_loss else (None, 1.0)
        policy, pred = self.per_sample_losses("policy", terms, pairs.cond, *guided)
        with torch.no_grad():
            reference, ref_pred = self.per_sample_losses("reference", terms, pairs.cond, *guided)
        loss, stats = pairwise_preference_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.beta,
                                               self.pair_weight(pairs))
        stats["output_kl"] = (pred.detach() - ref_pred).square().mean()
        return loss, stats

    def update(self, samples: RoundSamples) -> None:
        pairs = best_against_worst(samples, self.settings.min_gap)
        stats: dict[str, torch.Tensor] = {}
        for u in range(self.settings.updates_per_round):
            loss, stats = self.pair_loss(pairs, u) if pairs is not None else (self.zero_loss(), {})
            self.step_role("policy", loss)
        self.log_update({"pairs": len(pairs) if pairs is not None else 0, "loss": loss.detach(), **stats},
                        sums=("pairs",))  # the round's pairs; the rest averaged over the ranks
