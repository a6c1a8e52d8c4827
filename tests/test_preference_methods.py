"""The preference methods on a tiny model in-process: GRPO's ratio is 1 before its first update and its update
raises the likelihood of good rollouts; DPO/GAPO start at log 2 with the policy equal to the reference and their
updates make the policy prefer the winners; RWR weights follow the rewards; a pairs file is checked line by line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose
from omegaconf import OmegaConf

from anisora.config.errors import ConfigError
from anisora.data.datamodule import SyntheticDataModule
from anisora.data.pairs import read_pairs
from anisora.data.synthetic import WorldConfig
from anisora.diffusion.sampling import build_stepper, sde_log_prob
from anisora.methods.preference.grpo import GRPOMethod
from anisora.methods.preference.losses import group_advantages, reward_weights
from anisora.methods.preference.pairwise import PairwiseMethod, best_against_worst
from anisora.methods.preference.rounds import round_share
from anisora.methods.preference.rwr import RWRMethod

REWARD = {"name": "weighted", "scorers": ["ground_truth"],
          "weights": {"direction_correct": 1.0, "speed_score": 1.0, "colour_consistency": 0.5}}
ROUND = {"rollouts_per_prompt": 4, "rollout_steps": 3, "prompts_per_round": 2, "updates_per_round": 2}


def build(cls, **rl):
    cfg = compose("train", [*TINY, "optimizer.ema_decay=0", "logger=none"])
    c = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "guide", "optimizer", "sampler", "data")}
    method = cls(rl={**ROUND, **rl}, reward=REWARD, model=c["model"], guide=c["guide"], optimizer=c["optimizer"],
                 sampler=c["sampler"], max_steps=10, data=c["data"], role_lora={"rank": 4, "alpha": 8.0})
    optimizer = torch.optim.Adam(method.roles.parameters_of("policy"), lr=3e-3)

    def step_role(role, loss):  # what the Lightning loop does in step_role, without a trainer
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    method.step_role = step_role
    method.batches_seen, method._in_round = 1, True
    return method


def first_batch(method, prompts: int = 2):
    data = method.hparams.data
    world = WorldConfig(num_frames=data["num_frames"], height=data["height"], width=data["width"],
                        sprite_size=data["sprite_size"])
    dm = SyntheticDataModule(world, 0, prompts, truth=True)
    return next(iter(dm.train_dataloader()))


def perturb_policy(method, scale: float = 0.02):
    with torch.no_grad():
        for i, p in enumerate(method.roles.parameters_of("policy")):
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))


def test_grpo_ratio_is_one_before_the_first_update_and_the_update_raises_good_rollouts():
    method = build(GRPOMethod, clip_range=0.2, kl_weight=0.0)
    perturb_policy(method)  # the policy differs from the reference: the ratio is policy against itself
    samples = method.collect(first_batch(method))
    traj, spec = samples.trajectory, method.rollout_spec()
    assert spec.name == "flow_sde" and not spec.replace_known
    sigmas = build_stepper(method.objective, spec, method.device).sigmas
    stochastic = [j for j, s in enumerate(traj.steps) if s.log_prob is not None]
    assert len(stochastic) == 2 and traj.log_probs.shape == (8, 2)

    def log_probs():
        with torch.no_grad():
            rows = []
            for j in stochastic:
                step = traj.steps[j]
                mean, std = method.step_distribution("policy", step, j, sigmas, samples.cond, samples.uncond, spec)
                rows.append(sde_log_prob(step.next_latents, mean, std))
            return torch.stack(rows, dim=1)

    before = log_probs()
    assert (torch.exp(before - traj.log_probs) - 1).abs().max().item() < 1e-4
    adv = group_advantages(samples.rewards, 4)
    assert adv.abs().sum() > 0, "the round's rewards do not differ: nothing to learn from"
    method.update(samples)
    gain = (adv[:, None] * (log_probs() - traj.log_probs)).sum().item()
    assert gain > 0  # the surrogate rose: likelihood moved toward the better rollouts of each group


def test_pairwise_starts_at_log2_and_its_updates_prefer_the_winners():
    for weighting in ("none", "gap"):
        method = build(PairwiseMethod, weighting=weighting, updates_per_round=6)
        samples = method.collect(first_batch(method))
        pairs = best_against_worst(samples, 0.0)
        assert pairs is not None and bool((pairs.winner_score > pairs.loser_score).all())
        loss, stats = method.pair_loss(pairs, 0)  # policy = reference: every margin is 0
        weight = method.pair_weight(pairs)
        expected = math.log(2) * (1.0 if weight is None else float(weight.mean()))
        assert loss.item() == pytest.approx(expected, rel=1e-5) and stats["margin"].item() == 0.0
        assert method.beta == 100.0  # Flow-DPO's beta for a flow-matching model
        method.update(samples)
        with torch.no_grad():
            _, after = method.pair_loss(pairs, 0)
        assert after["margin"].item() > 0 and after["implicit_acc"].item() == 1.0, weighting


def test_the_guided_pairwise_loss_scores_the_cfg_prediction_the_rollouts_sampled_with():
    method = build(PairwiseMethod, guided_loss=True, guidance_scale=4.0)
    perturb_policy(method)
    samples = method.collect(first_batch(method))
    pairs = best_against_worst(samples, -1.0)
    assert pairs is not None and pairs.uncond is not None and len(pairs.uncond.text) == 2 * len(pairs)
    terms = method.denoising_terms(torch.cat([pairs.winner, pairs.loser]), pairs.seeds * 2, 0)
    _, guided = method.per_sample_losses("policy", terms, pairs.cond, pairs.uncond, 4.0)
    with torch.no_grad(), method.roles.use("policy"):
        cond = method.backbone.denoise(terms["noisy"], terms["timestep"], pairs.cond).float()
        uncond = method.backbone.denoise(terms["noisy"], terms["timestep"], pairs.uncond).float()
    assert torch.allclose(guided, uncond + 4.0 * (cond - uncond), atol=1e-5)
    assert not torch.allclose(guided, cond, atol=1e-3)
    loss, stats = method.pair_loss(pairs, 0)
    assert torch.isfinite(loss) and stats["margin"].item() != 0.0  # a perturbed policy differs from the reference


def test_rwr_weights_follow_rewards_within_each_group_and_training_runs():
    method = build(RWRMethod, temperature=0.5)
    samples = method.collect(first_batch(method))
    weights = reward_weights(group_advantages(samples.rewards, 4), 0.5)
    for group in range(2):
        r, w = samples.rewards[group * 4:(group + 1) * 4], weights[group * 4:(group + 1) * 4]
        assert torch.equal(torch.argsort(r, stable=True), torch.argsort(w, stable=True)) or r.unique().numel() == 1
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    before = [p.detach().clone() for p in method.roles.parameters_of("policy")]
    method.update(samples)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.roles.parameters_of("policy")))


def test_a_round_splits_into_one_contiguous_share_per_rank_or_fails_in_one_line():
    shares = [round_share(6, rank, 3) for rank in range(3)]
    assert [list(range(6))[s] for s in shares] == [[0, 1], [2, 3], [4, 5]]  # in rank order: the round itself
    assert round_share(4, 0, 1) == slice(0, 4)
    with pytest.raises(ConfigError, match=r"^rl.prompts_per_round: 3 prompts per round do not split evenly over 2 "
                                          r"data-parallel ranks: use a multiple of 2$"):
        round_share(3, 0, 2)


def test_a_pairs_file_is_checked_line_by_line(tmp_path):
    video = np.zeros((5, 16, 16, 3), np.uint8)
    np.save(tmp_path / "w.npy", video)
    np.save(tmp_path / "l.npy", video)
    good = {"video_path": "w.npy,l.npy", "caption": "a red slime moves left", "w_score": 80, "l_score": 40}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n")
    (entry,) = read_pairs(path)
    assert entry.winner == tmp_path / "w.npy" and (entry.winner_score, entry.loser_score) == (80.0, 40.0)
    cases = [({**good, "video_path": "w.npy,gone.npy"}, r"^pairs: .* entry 2: video .*gone\.npy does not exist$"),
             ({k: v for k, v in good.items() if k != "l_score"}, r"^pairs: .* entry 2: no 'l_score'"),
             ({**good, "w_score": "high"}, r"entry 2: w_score and l_score must be numbers$"),
             ({**good, "video_path": "w.npy"}, r"entry 2: video_path must name two videos")]
    for row, message in cases:
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(ConfigError, match=message):
            read_pairs(path)
