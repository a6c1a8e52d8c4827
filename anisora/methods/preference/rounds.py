"""What every preference / RL method shares: a policy and a reference over one base, rounds of scored rollouts,
held-out evaluation with guard rails, and offline batches of pairs.

A training batch is one round. Online it holds prompts with their guide clips (and ground truth): the policy
samples K rollouts per prompt and guide through the sampler core, a scorer of `anisora.rewards` scores every one,
and the subclass turns the scores into pairs or advantages and takes `updates_per_round` optimizer steps. Offline
(a pairs file) the batch already holds both videos of each pair with their scores. Every draw (rollout noise, the
noise and level of each update) comes from seeds of the batch's samples and the round, so a run resumed from a
round's checkpoint repeats the rounds an uninterrupted run would have done.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anisora.backbones.base import Conditioning
from anisora.config.errors import ConfigError
from anisora.config.schema import RLConfig
from anisora.diffusion.loss_weights import motion_loss_weight, weighted_mse_per_sample
from anisora.diffusion.sampling import Rollout, SamplerSpec, rollout
from anisora.guidance.pair import pair_from_video
from anisora.methods.base import DiffusionMethod

log = logging.getLogger("anisora.rl")


def seed_of(*parts: int) -> int:
    """One seed from several integers (a sample's seed, the round, the rollout or update index)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class RoundSamples:
    """One round's samples: latents with the conditioning they were sampled (or given) with, and their scores.
    Online samples are laid out group by group: K consecutive rollouts of one prompt and guide."""

    latents: torch.Tensor  # (N, C, T, h, w) clean latents
    cond: Conditioning
    uncond: Conditioning | None
    seeds: list[int]  # per sample: its noise and level draws in the updates
    rewards: torch.Tensor  # (N,) the optimised dimension (NaN replaced by the round's worst)
    scores: list[dict[str, float]]
    group_size: int
    trajectory: Rollout | None = None


def take(cond: Conditioning, index: torch.Tensor | list[int]) -> Conditioning:
    """The rows `index` of a batch's conditioning."""
    index = torch.as_tensor(index, dtype=torch.long, device=cond.text.device)
    return Conditioning(text=cond.text[index], guide=cond.guide[index],
                        image=None if cond.image is None else cond.image[index])


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each dimension over the clips where it applies (NaN elsewhere)."""
    out = {}
    for key in rows[0] if rows else []:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = float(np.mean(values)) if values else math.nan
    return out


class PreferenceMethod(DiffusionMethod):
    """The shared LightningModule of rl_finetune.py; subclasses write `update(samples)`."""

    role_names = ("policy", "reference")
    ema_follows = "policy"
    settings_class: type[RLConfig] = RLConfig
    #: whether rollouts keep their trajectory (GRPO's per-step log-probabilities)
    records_trajectory = False

    def __init__(self, rl: dict[str, Any], reward: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.settings = self.settings_class(**rl)
        self.reward_config = reward
        self._scorer = None
        self.history: list[dict[str, float]] = []  # held-out means per evaluation (with `round`)
        self.stop_reason: str | None = None
        self._in_round = False

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rl_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.history = list(checkpoint.get("rl_history", []))

    @property
    def rounds_done(self) -> int:
        """Rounds completed; inside a round's training_step, that round's index (the batch is counted at its
        start)."""
        return self.batches_seen - int(self._in_round)

    # ----------------------------------------------------------------- scoring
    @property
    def scorer(self):
        """The reward's scorer, built on first use (a checkpoint loaded for sampling never builds it)."""
        if self._scorer is None:
            from anisora.rewards import build_scorer

            if not self.reward_config:
                raise ConfigError("reward", "rl_finetune optimises a reward: choose one, e.g. reward=weighted")
            self._scorer = build_scorer(self.reward_config)
            check_optimised(self._scorer, self.settings.optimise)
        return self._scorer

    def score(self, latents: torch.Tensor, guide: torch.Tensor, mask: torch.Tensor, captions: list[str],
              truths: list[dict[str, Any] | None]) -> list[dict[str, float]]:
        """Decode and score clips sampled for (guide, mask, captions)."""
        from anisora.rewards import clips_from_tensors

        with torch.no_grad():
            pixels = self.backbone.decode_latents(latents.to(next(self.backbone.denoiser.parameters()).dtype),
                                                  num_frames=guide.shape[2])
        return self.scorer.score(clips_from_tensors(pixels.cpu(), guide.cpu(), mask.cpu(), captions, truths))

    def rewards_of(self, scores: list[dict[str, float]]) -> torch.Tensor:
        values = torch.tensor([float(s[self.settings.optimise]) for s in scores], dtype=torch.float32)
        finite = values[~values.isnan()]
        return values.nan_to_num(float(finite.min()) if len(finite) else 0.0)

    # ----------------------------------------------------------------- sampling
    def checkpoint_sampler(self, **changes: Any) -> SamplerSpec:
        """The checkpoint's sampler at the rollout step count (and guidance, when set), with `changes`."""
        fields = {**self.hparams.sampler, "num_steps": self.settings.rollout_steps}
        if self.settings.guidance_scale is not None:
            fields["guidance_scale"] = self.settings.guidance_scale
        return SamplerSpec(**{**fields, **changes})

    def rollout_spec(self) -> SamplerSpec:
        """What rollouts sample with: the checkpoint's sampler as infer.py uses it (guided latents re-imposed where
        the codec allows), so the samples a method learns from keep their guides exactly."""
        return self.checkpoint_sampler()

    def held_out_spec(self) -> SamplerSpec:
        """What the held-out evaluation samples with, for every method alike: the checkpoint's sampler without
        re-imposing guided latents, so guided-frame fidelity is the model's own."""
        return self.checkpoint_sampler(replace_known=False)

    def conditioning(self, captions: list[str], guide: torch.Tensor, mask: torch.Tensor, spec: SamplerSpec
                     ) -> tuple[Conditioning, Conditioning | None]:
        cond = self.backbone.conditioning(captions, guide, mask)
        if spec.guidance_scale == 1.0:
            return cond, None
        null = self.backbone.encode_prompt([""] * len(captions))
        return cond, Conditioning(text=null, guide=cond.guide, image=cond.image)

    def guide_pairs(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, M) of each clip: its first frame given (the I2V guide of AniSora's RL data)."""
        pairs = [pair_from_video(v.cpu(), [0]) for v in video]
        return torch.stack([p[0] for p in pairs]).to(self.device), torch.stack([p[1] for p in pairs]).to(self.device)

    @torch.no_grad()
    def collect(self, batch: dict[str, Any]) -> RoundSamples:
        """K rollouts per prompt and guide with the policy, decoded and scored; every dimension is logged."""
        k, spec = self.settings.rollouts_per_prompt, self.rollout_spec()
        video = batch["video"]
        guide, mask = self.guide_pairs(video)
        guide, mask = guide.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        captions = [c for c in batch["caption"] for _ in range(k)]
        truths = [t for t in batch.get("truth", [None] * len(video)) for _ in range(k)]
        seeds = [seed_of(s, self.rounds_done, j) for s in batch["seed"] for j in range(k)]
        cond, uncond = self.conditioning(captions, guide, mask, spec)
        known = self.backbone.known_latents(guide, mask) if spec.replace_known else None
        shape = self.backbone.latent_shape(*video.shape[2:])
        with self.roles.use("policy"):
            out = rollout(self.backbone, cond, uncond, shape, spec, seeds=seeds, known=known,
                          record=self.records_trajectory)
        scores = self.score(out.latents, guide, mask, captions, truths)
        for key, value in mean_scores(scores).items():
            self.log(f"rollout/{key}", value, batch_size=len(scores))
        return RoundSamples(out.latents.detach(), cond, uncond, seeds, self.rewards_of(scores), scores, k,
                            out if self.records_trajectory else None)

    @torch.no_grad()
    def held_out(self) -> dict[str, float]:
        """Mean scores on the benchmark prompts (first frame + caption, fixed seeds, the model alone)."""
        from anisora.data.synthetic import benchmark_clips
        from anisora.inference.pipeline import from_uint8_frames
        from anisora.tasks.infer import world_from_data

        data = dict(self.hparams.data)
        clips = benchmark_clips(world_from_data(data), int(data.get("seed", 0)), self.settings.eval_prompts)
        video = torch.stack([from_uint8_frames(c.video) for c in clips]).to(self.device)
        guide, mask = self.guide_pairs(video)
        spec = self.held_out_spec()
        captions = [c.caption for c in clips]
        cond, uncond = self.conditioning(captions, guide, mask, spec)
        with self.roles.use(self.sample_role):
            out = rollout(self.backbone, cond, uncond, self.backbone.latent_shape(*video.shape[2:]), spec,
                          seeds=list(range(len(clips))))
        return mean_scores(self.score(out.latents, guide, mask, captions, [c.truth.to_json() for c in clips]))

    def evaluate_and_guard(self, log_metrics: bool = True) -> dict[str, float]:
        """Held-out scores now, logged and kept in `history`; a guarded dimension that fell more than allowed
        below its first value stops the run (`stop_reason`, one line)."""
        scores = self.held_out()
        self.history.append({"round": float(self.rounds_done), **scores})
        if log_metrics:
            for key, value in scores.items():
                self.log(f"heldout/{key}", value, batch_size=self.settings.eval_prompts)
        start = self.history[0]
        for key, allowed in self.settings.guard.items():
            drop = start.get(key, math.nan) - scores.get(key, math.nan)
            if drop > allowed:
                self.stop_reason = (f"held-out {key} fell {drop:.4g} below its start ({start[key]:.4g} -> "
                                    f"{scores[key]:.4g}) after round {self.rounds_done}, more than "
                                    f"rl.guard.{key}={allowed}")
                if log_metrics:
                    self.trainer.should_stop = True
        log.info("held-out after round %d: %s", self.rounds_done,
                 ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return scores

    # ----------------------------------------------------------------- denoising losses
    def denoising_terms(self, x0: torch.Tensor, seeds: list[int], update: int) -> dict[str, torch.Tensor]:
        """x_t, timestep, target and location weight for clean latents, the level and noise drawn per sample from
        (its seed, the round, the update): samples that share a seed share noise and level (a pair's winner and
        loser)."""
        objective = self.objective
        gens = [torch.Generator("cpu").manual_seed(seed_of(s, self.rounds_done, 1000 + update)) for s in seeds]
        levels = torch.cat([objective.draw_levels(1, g) for g in gens])
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
        level_weight = objective.loss_weight(levels)
        weight = motion_loss_weight(x0, self.motion_weight, self.backbone.residual_latents)
        if level_weight is not None:
            scale = level_weight.to(x0).view(-1, 1, 1, 1, 1)
            weight = scale if weight is None else weight * scale
        return {"noisy": objective.add_noise(x0, noise, levels), "timestep": objective.model_timestep(levels)
                .to(self.device), "target": objective.target(x0, noise, levels), "weight": weight}

    def per_sample_losses(self, role: str, terms: dict[str, torch.Tensor], cond: Conditioning
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) denoising losses of `role` and its predictions (with gradients only for the policy)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and role == "policy"), self.roles.use(role):
            pred = self.backbone.denoise(terms["noisy"], terms["timestep"], cond).float()
        return weighted_mse_per_sample(pred, terms["target"].float(), terms["weight"]), pred

    # ----------------------------------------------------------------- the round
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._in_round = True
        if not self.history:
            self.evaluate_and_guard()  # the start every guard compares with
        samples = self.offline_samples(batch) if "winner" in batch else self.collect(batch)
        self.update(samples)
        self._in_round = False
        self.log("rl/round", float(self.rounds_done), batch_size=1)
        if self.rounds_done % self.settings.eval_every == 0:
            self.evaluate_and_guard()

    def offline_samples(self, batch: dict[str, Any]) -> RoundSamples:
        raise ConfigError("pairs", f"{type(self).__name__} learns from rollouts, not from a pairs file")

    def update(self, samples: RoundSamples) -> None:
        raise NotImplementedError

    def zero_loss(self) -> torch.Tensor:
        """A loss with zero gradients (a round without usable pairs still takes its steps, so step counts and
        checkpoints stay on round boundaries)."""
        return sum(p.sum() for p in self.roles.parameters_of("policy")) * 0.0


def check_optimised(scorer, key: str) -> None:
    if key not in scorer.dimensions:
        raise ConfigError("rl.optimise", f"the reward's scorer has no dimension {key!r}; it has "
                                         f"{', '.join(scorer.dimensions)}")
    if key not in scorer.higher_is_better:
        raise ConfigError("rl.optimise", f"lower is better for {key!r}: maximise a dimension among "
                                         f"{', '.join(scorer.higher_is_better)}")
