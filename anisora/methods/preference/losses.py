"""The losses of preference and reward fine-tuning, as plain tensor functions (the methods feed them).

- Pairwise (Diffusion-DPO, Flow-DPO, GAPO): per pair, with the per-sample denoising losses of policy and reference on
  the winner and the loser at the same noise and level, z = -beta/2 [(l_w - ref_w) - (l_l - ref_l)] and the loss
  -log sigmoid(z), times a per-pair weight before the mean (GAPO's gap weight; 1 for DPO). AniSora's released code
  averages before weighting; per pair is the exact form (papers-and-users.md section 2.3).
- Reward-weighted regression: the denoising loss of each generated sample weighted by exp(advantage / temperature).
- GRPO (Flow-GRPO): group-normalised advantages, the PPO-clipped ratio of per-step SDE log-probabilities, and the
  KL of the policy's Gaussian step to the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gap_weight(winner_score: torch.Tensor, loser_score: torch.Tensor, base: float = 2.0,
               score_range: float = 100.0) -> torch.Tensor:
    """GAPO's gap-aware pair weight base^(s_w / R) - base^(s_l / R): near-ties count little, and the same gap counts
    more at high quality (AniSora: base 2 on 0-100 scores, R = 100)."""
    return base ** (winner_score / score_range) - base ** (loser_score / score_range)


def pairwise_preference_loss(policy_winner: torch.Tensor, policy_loser: torch.Tensor, ref_winner: torch.Tensor,
                             ref_loser: torch.Tensor, beta: float, weight: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO on per-sample denoising losses (B,) -> (loss, stats). A policy that lowers its loss on the winner
    more than the reference does (relative to the loser) has z > 0 and a loss below log 2."""
    delta = (policy_winner - ref_winner) - (policy_loser - ref_loser)
    z = -0.5 * beta * delta
    per_pair = -F.logsigmoid(z)
    weighted = per_pair if weight is None else per_pair * weight.to(per_pair)
    stats = {"implicit_acc": (z > 0).float().mean().detach(), "margin": z.mean().detach(),
             "dpo_loss": per_pair.mean().detach()}
    return weighted.mean(), stats


def reward_weights(advantages: torch.Tensor, temperature: float) -> torch.Tensor:
    """RWR's per-sample weights exp(A / T), normalised to mean 1 over the batch (the loss scale of SFT)."""
    logits = advantages.float() / temperature
    return torch.softmax(logits, dim=0) * logits.numel()


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, clip: float = 5.0) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), clipped to +-clip; rewards are laid out group by group
    (K consecutive rollouts of one prompt and guide)."""
    groups = rewards.float().view(-1, group_size)
    adv = (groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv.clamp(-clip, clip).flatten()


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate on per-sample log-probabilities of one step: mean max(-A r, -A clip(r, 1-e, 1+e)),
    r = exp(log_prob - old_log_prob). Raising the likelihood of a positive-advantage sample lowers it."""
    ratio = torch.exp(log_prob - old_log_prob.detach())
    adv = advantages.detach().to(ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    stats = {"ratio_dev": (ratio.detach() - 1).abs().max(), "clip_frac": ((ratio.detach() - 1).abs() > clip_range)
             .float().mean()}
    return torch.maximum(unclipped, clipped).mean(), stats


def gaussian_step_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL of two Gaussian steps with the same std, ||mu - mu_ref||^2 / (2 std^2), averaged over latent elements
    (the log-probabilities' convention) -> (B,)."""
    std = std.view(-1, *([1] * (mean.ndim - 1))).to(mean) if std.ndim else std.to(mean)
    return ((mean - ref_mean.detach()) ** 2 / (2 * std**2)).flatten(1).mean(dim=1)
