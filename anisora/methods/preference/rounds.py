"""What every preference / RL method shares: a policy and a reference over one base, rounds of scored rollouts,
held-out evaluation with guard rails, and offline batches of pairs.

A training batch is one round. Online it holds prompts with their guide clips (and ground truth): the policy
samples K rollouts per prompt and guide through the sampler core, a scorer of `anisora.rewards` scores every one,
and the subclass turns the scores into pairs or advantages and takes `updates_per_round` optimizer steps. Offline
(a pairs file) the batch already holds both videos of each pair with their scores. Every draw (rollout noise, the
noise and level of each update) comes from seeds of the batch's samples and the round, so a run resumed from a
round's checkpoint repeats the rounds an uninterrupted run would have done.

Under data parallelism every rank reads the round's prompts and rolls out its own contiguous share of them (by
global rank; the ranks of a sequence-parallel group share one), so a round is the same prompts whatever the world
size. A prompt's group stays on the rank that sampled it: its pairs and advantages need no other rank's latents.
The scores, with prompt and rollout ids, are gathered from every rank into the round's table (`RoundTable`), which
round-wide reward normalisation (RWR), the round's record and the logged metrics read, so every rank logs the
same values; DDP averages the gradients of each rank's own samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anisora.accelerators.distributed import gather_objects
from anisora.backbones.base import Conditioning
from anisora.config.errors import ConfigError
from anisora.config.schema import RLConfig
from anisora.diffusion.loss_weights import motion_loss_weight, weighted_mse_per_sample
from anisora.diffusion.sampling import Rollout, SamplerSpec, guided_output, rollout
from anisora.guidance.pair import pair_from_video
from anisora.methods.base import DiffusionMethod

log = logging.getLogger("anisora.rl")


def seed_of(*parts: int) -> int:
    """One seed from several integers (a sample's seed, the round, the rollout or update index)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def round_share(count: int, rank: int, world: int) -> slice:
    """The rows of a round's `count` prompts that data-parallel rank `rank` of `world` rolls out: one contiguous
    block each, so the blocks in rank order are the round as one process sees it."""
    if count % world:
        raise ConfigError("rl.prompts_per_round", f"{count} prompts per round do not split evenly over {world} "
                                                  f"data-parallel ranks: use a multiple of {world}")
    return block_share(count, rank, world)


def block_share(count: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous block of `count` items split as evenly as they go over `world` ranks (the last
    blocks may be shorter or empty): held-out prompts, whose count need not divide."""
    per = -(-count // world)
    start = min(count, rank * per)
    return slice(start, min(count, start + per))


def fill_nan(values: torch.Tensor) -> torch.Tensor:
    """NaN rewards (a dimension that does not apply) replaced by the worst finite one (0 when none is)."""
    finite = values[~values.isnan()]
    return values.nan_to_num(float(finite.min()) if len(finite) else 0.0)


@dataclass
class RoundTable:
    """Every sample of a round, gathered from every data-parallel rank in rank order (a rank's rows are its prompts'
    groups): what round statistics, round-wide reward normalisation and the logged metrics read."""

    prompts: list[int]  # per sample: its prompt's index in the data stream
    rollouts: list[int]  # per sample: its place in its prompt's group (offline: 0 winner, 1 loser)
    ranks: list[int]  # per sample: the global rank that sampled and scored it
    rewards: torch.Tensor  # (N,) the optimised dimension, NaN replaced by the round's worst
    scores: list[dict[str, float]]  # per sample, every dimension of the scorer (offline: none)
    local: slice  # this rank's rows

    def columns(self) -> dict[str, list]:
        return {"prompt": self.prompts, "rollout": self.rollouts, "rank": self.ranks,
                "reward": self.rewards.tolist()}

    def digest(self) -> str:
        """A short fingerprint of the table, for checking in each rank's log that all ranks hold the same one."""
        return hashlib.sha1(json.dumps(self.columns()).encode()).hexdigest()[:12]


@dataclass
class RoundSamples:
    """One round's samples on this rank: latents with the conditioning they were sampled (or given) with, and their
    scores. Online samples are laid out group by group: K consecutive rollouts of one prompt and guide."""

    latents: torch.Tensor  # (N, C, T, h, w) clean latents
    cond: Conditioning
    uncond: Conditioning | None
    seeds: list[int]  # per sample: its noise and level draws in the updates
    rewards: torch.Tensor  # (N,) the optimised dimension (NaN replaced by the round's worst)
    scores: list[dict[str, float]]
    group_size: int
    trajectory: Rollout | None = None
    table: RoundTable | None = None  # the whole round, every rank's samples

    @property
    def round_rewards(self) -> torch.Tensor:
        """The rewards of the whole round (every rank's samples, in rank order)."""
        return self.rewards if self.table is None else self.table.rewards

    @property
    def rows(self) -> slice:
        """This rank's rows of `round_rewards`."""
        return slice(0, len(self.rewards)) if self.table is None else self.table.local


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
        self.round_records: list[dict[str, Any]] = []  # per round: its gathered score table and statistics
        self._round_record: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self._in_round = False

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rl_history"] = list(self.history)
        checkpoint["rl_rounds"] = list(self.round_records)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.history = list(checkpoint.get("rl_history", []))
        self.round_records = list(checkpoint.get("rl_rounds", []))

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
        return fill_nan(torch.tensor([float(s[self.settings.optimise]) for s in scores], dtype=torch.float32))

    # ----------------------------------------------------------------- ranks
    def data_parallel_place(self) -> tuple[int, int, int]:
        """(rank, world) among the data-parallel ranks and the sequence-parallel degree: the ranks of a
        sequence-parallel group split one sample's tokens, so they roll out the same prompts."""
        sp = int(self.hparams.get("sequence_parallel", 1))
        world = self._trainer.world_size if self._trainer is not None else 1
        return self.global_rank // sp, max(1, world // sp), sp

    def local_prompts(self, batch: dict[str, Any]) -> dict[str, Any]:
        """This rank's share of the round's prompts (every rank reads them all; alone, the whole batch)."""
        rank, world, _ = self.data_parallel_place()
        if world == 1:
            return batch
        rows = round_share(len(batch["seed"]), rank, world)
        return {key: value[rows] for key, value in batch.items()}

    def gather(self, value: Any) -> list[Any]:
        """`value` of every data-parallel rank in rank order (one collective; none alone), one copy per
        sequence-parallel group."""
        _, world, sp = self.data_parallel_place()
        return [value] if world * sp == 1 else gather_objects(value)[::sp]

    def gather_round(self, prompts: list[int], rollouts: list[int], rewards: list[float],
                     scores: list[dict[str, float]]) -> RoundTable:
        """The round's table from this rank's samples (their prompt ids, places in the group, raw rewards and
        scores) and every other rank's; starts the round's record."""
        rank, world, sp = self.data_parallel_place()
        parts = self.gather({"prompts": prompts, "rollouts": rollouts, "rewards": rewards, "scores": scores})
        table = RoundTable(prompts=[int(p) for part in parts for p in part["prompts"]],
                           rollouts=[int(j) for part in parts for j in part["rollouts"]],
                           ranks=[g * sp for g, part in enumerate(parts) for _ in part["prompts"]],
                           rewards=fill_nan(torch.tensor([float(r) for part in parts for r in part["rewards"]],
                                                         dtype=torch.float32)),
                           scores=[s for part in parts for s in part["scores"]],
                           local=slice(rank * len(prompts), (rank + 1) * len(prompts)))
        self._round_record = {"world_size": world, "mean": mean_scores(table.scores), **table.columns()}
        if world > 1:
            log.info("round %d, rank %d of %d: prompts %s; the round's table: %d samples of %d prompts, digest %s",
                     self.rounds_done + 1, self.global_rank, world * sp, sorted(set(prompts)), len(table.prompts),
                     len(set(table.prompts)), table.digest())
        return table

    def log_update(self, stats: dict[str, Any], sums: tuple[str, ...] = (), maxima: tuple[str, ...] = ()
                   ) -> dict[str, float]:
        """Log the round's update statistics under rl/, the same value on every rank: each rank's values gathered
        in one collective and reduced over the ranks that report them (the mean; the sum or the max for the keys
        named), and kept in the round's record."""
        parts = self.gather({key: float(value) for key, value in stats.items()})
        out: dict[str, float] = {}
        for key in dict.fromkeys(k for part in parts for k in part):
            values = [part[key] for part in parts if key in part]
            out[key] = sum(values) if key in sums else max(values) if key in maxima else sum(values) / len(values)
            self.log(f"rl/{key}", out[key], batch_size=1, prog_bar=key == "loss")
        self._round_record["update"] = out
        return out

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
        """K rollouts per prompt and guide of this rank's prompts with the policy, decoded and scored; every
        dimension's mean over the whole round (every rank's rollouts) is logged."""
        batch = self.local_prompts(batch)
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
        prompts = batch.get("index", list(range(len(video))))
        table = self.gather_round([p for p in prompts for _ in range(k)], [j for _ in prompts for j in range(k)],
                                  [float(s[self.settings.optimise]) for s in scores], scores)
        for key, value in self._round_record["mean"].items():
            self.log(f"rollout/{key}", value, batch_size=len(table.scores))
        return RoundSamples(out.latents.detach(), cond, uncond, seeds, table.rewards[table.local], scores, k,
                            out if self.records_trajectory else None, table)

    @torch.no_grad()
    def held_out(self) -> dict[str, float]:
        """Mean scores on the benchmark prompts (first frame + caption, fixed seeds, the model alone). Each
        data-parallel rank samples its block of the prompts (a prompt's seed is its index, so the split does not
        change its sample) and every rank gets the same means, from all the blocks."""
        from anisora.data.synthetic import benchmark_clips
        from anisora.inference.pipeline import from_uint8_frames
        from anisora.tasks.infer import world_from_data

        data = dict(self.hparams.data)
        clips = benchmark_clips(world_from_data(data), int(data.get("seed", 0)), self.settings.eval_prompts)
        rank, world, _ = self.data_parallel_place()
        mine = list(range(len(clips)))[block_share(len(clips), rank, world)]
        rows: list[dict[str, float]] = []
        if mine:
            video = torch.stack([from_uint8_frames(clips[i].video) for i in mine]).to(self.device)
            guide, mask = self.guide_pairs(video)
            spec = self.held_out_spec()
            captions = [clips[i].caption for i in mine]
            cond, uncond = self.conditioning(captions, guide, mask, spec)
            with self.roles.use(self.sample_role):
                out = rollout(self.backbone, cond, uncond, self.backbone.latent_shape(*video.shape[2:]), spec,
                              seeds=mine)
            rows = self.score(out.latents, guide, mask, captions, [clips[i].truth.to_json() for i in mine])
        return mean_scores([row for part in self.gather(rows) for row in part])

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

    def per_sample_losses(self, role: str, terms: dict[str, torch.Tensor], cond: Conditioning,
                          uncond: Conditioning | None = None, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) denoising losses of `role` and its predictions (with gradients only for the policy); with `uncond`,
        of the guided prediction at `scale` (one batched CFG call)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and role == "policy"), self.roles.use(role):
            pred = guided_output(self.backbone, terms["noisy"], terms["timestep"], cond,
                                 uncond if scale != 1.0 else None, scale, terms["noisy"].dtype)
        return weighted_mse_per_sample(pred, terms["target"].float(), terms["weight"]), pred

    # ----------------------------------------------------------------- the round
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._in_round = True
        if not self.history:
            self.evaluate_and_guard()  # the start every guard compares with
        samples = self.offline_samples(batch) if "winner" in batch else self.collect(batch)
        self.update(samples)
        self._in_round = False
        self.round_records.append({"round": self.rounds_done, **self._round_record})
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
