"""Reward-weighted regression (Flow-RWR): the denoising loss of the policy's own rollouts, each weighted by
exp(advantage / temperature) with advantages normalised within a prompt's group, so better rollouts of the same
prompt and guide pull harder (papers-and-users.md section 5). The weights are normalised over the whole round
(every rank's samples), so under data parallelism the averaged gradient is the one of a single process."""

from __future__ import annotations

import torch

from anisora.config.schema import RWRConfig
from anisora.methods.preference.losses import group_advantages, reward_weights
from anisora.methods.preference.offline import OfflinePairs
from anisora.methods.preference.rounds import PreferenceMethod, RoundSamples


class RWRMethod(OfflinePairs, PreferenceMethod):
    settings_class = RWRConfig

    def update(self, samples: RoundSamples) -> None:
        round_weights = reward_weights(group_advantages(samples.round_rewards, samples.group_size),
                                       self.settings.temperature)
        weights = round_weights[samples.rows].to(self.device)
        for u in range(self.settings.updates_per_round):
            terms = self.denoising_terms(samples.latents, samples.seeds, u)
            losses, pred = self.per_sample_losses("policy", terms, samples.cond)
            loss = (weights * losses).mean()
            self.step_role("policy", loss)
        with torch.no_grad():
            _, ref_pred = self.per_sample_losses("reference", terms, samples.cond)
        self.log_update({"loss": loss.detach(), "output_kl": (pred.detach() - ref_pred).square().mean(),
                         "weight_max": round_weights.max()}, maxima=("weight_max",))
