"""Preference and RL losses against hand-computed toys: signs, beta, GAPO's gap weight (per pair, before the mean),
RWR weights, group advantages, the clipped ratio and the Gaussian-step KL."""

from __future__ import annotations

import math

import pytest
import torch

from anisora.methods.preference.losses import (
    clipped_policy_loss,
    gap_weight,
    gaussian_step_kl,
    group_advantages,
    pairwise_preference_loss,
    reward_weights,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_loss_sign_and_beta_on_a_toy_pair():
    # the policy lowers its winner loss by 0.5 and raises its loser loss by 0.5 against the reference:
    # delta = (1.0 - 1.5) - (2.0 - 1.5) = -1, z = -beta/2 * delta = 1 for beta 2, loss = log(1 + e^-1)
    loss, stats = pairwise_preference_loss(t(1.0), t(2.0), t(1.5), t(1.5), beta=2.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)
    assert stats["implicit_acc"].item() == 1.0 and stats["margin"].item() == pytest.approx(1.0)
    swapped, stats = pairwise_preference_loss(t(2.0), t(1.0), t(1.5), t(1.5), beta=2.0)  # prefers the loser
    assert swapped.item() == pytest.approx(math.log(1 + math.exp(1)), abs=1e-12)
    assert stats["implicit_acc"].item() == 0.0
    beta_100, _ = pairwise_preference_loss(t(1.0), t(1.01), t(1.0), t(1.0), beta=100.0)  # z = 0.5
    assert beta_100.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-9)
    tie, _ = pairwise_preference_loss(t(1.0), t(1.0), t(1.0), t(1.0), beta=5000.0)
    assert tie.item() == pytest.approx(math.log(2))


def test_dpo_gradient_lowers_the_winner_loss_and_raises_the_loser_loss():
    pw, pl = t(1.0).requires_grad_(), t(1.0).requires_grad_()
    loss, _ = pairwise_preference_loss(pw, pl, t(1.0), t(1.0), beta=10.0)
    loss.backward()
    assert pw.grad.item() == pytest.approx(2.5) and pl.grad.item() == pytest.approx(-2.5)  # beta/2 * sigmoid(0)


def test_gapo_gap_weight_matches_anisora_and_weights_each_pair_before_the_mean():
    w = gap_weight(t(60, 95, 80, 55), t(50, 85, 40, 54), base=2.0, score_range=100.0)
    torch.testing.assert_close(w, t(2**0.6 - 2**0.5, 2**0.95 - 2**0.85, 2**0.8 - 2**0.4, 2**0.55 - 2**0.54))
    assert [round(v, 4) for v in w.tolist()] == [0.1015, 0.1294, 0.4216, 0.0101]  # papers-and-users.md 2.3
    # two pairs: z = 1 and z = -1; weights 0.1 and 0.4: per pair 0.1 l(1) + 0.4 l(-1), halved
    policy_w, policy_l, ref = t(1.0, 2.0), t(2.0, 1.0), t(1.5, 1.5)
    weight = t(0.1, 0.4)
    loss, _ = pairwise_preference_loss(policy_w, policy_l, ref, ref, beta=2.0, weight=weight)
    l_pos, l_neg = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert loss.item() == pytest.approx((0.1 * l_pos + 0.4 * l_neg) / 2, abs=1e-12)
    released = weight.mean() * (l_pos + l_neg) / 2  # AniSora's code: mean(weight) * mean(DPO), not the same
    assert abs(loss.item() - released.item()) > 0.05


def test_reward_weights_and_group_advantages():
    torch.testing.assert_close(reward_weights(t(0.0, 1.0), 1.0).double(),
                               t(2 / (1 + math.e), 2 * math.e / (1 + math.e)))
    adv = group_advantages(t(1, 2, 3, 4, 5, 5, 5, 5), group_size=4)
    std = math.sqrt(1.25)
    torch.testing.assert_close(adv[:4].double(), t(-1.5, -0.5, 0.5, 1.5) / (std + 1e-4))
    assert adv[4:].abs().max().item() == 0.0  # a group with one reward has nothing to learn
    assert group_advantages(t(0, 0, 0, 100), 4, clip=1.0).max().item() == 1.0


def test_clipped_policy_loss_sign_and_clip():
    lp, old = t(0.1), t(0.0)  # ratio e^0.1 = 1.105
    pos, stats = clipped_policy_loss(lp, old, t(1.0), clip_range=0.05)
    assert pos.item() == pytest.approx(-1.05)  # positive advantage: the ratio is clipped at 1 + 0.05
    neg, _ = clipped_policy_loss(lp, old, t(-1.0), clip_range=0.05)
    assert neg.item() == pytest.approx(math.exp(0.1))  # negative advantage: the unclipped (larger) loss
    assert stats["clip_frac"].item() == 1.0
    lp = t(0.0).requires_grad_()
    loss, stats = clipped_policy_loss(lp, t(0.0), t(2.0), clip_range=0.2)
    loss.backward()
    assert stats["ratio_dev"].item() == 0.0 and lp.grad.item() == pytest.approx(-2.0)  # raise a good sample's lp


def test_gaussian_step_kl():
    mean, ref = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    torch.testing.assert_close(gaussian_step_kl(mean, ref, torch.tensor(0.5)), torch.tensor([2.0, 2.0]))
    assert gaussian_step_kl(ref, ref, torch.tensor(0.5)).abs().max().item() == 0.0
