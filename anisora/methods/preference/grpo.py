"""Flow-GRPO (next-batch.md section 2.2): stochastic `flow_sde` rollouts with per-step log-probabilities, advantages
normalised within each group of K rollouts of one prompt and guide, the PPO-clipped ratio of each trained step's
log-probability under the policy now and at rollout time, and the KL of the policy's Gaussian step to the
reference's (the base with adapters off). Rollouts keep guided latents as the model makes them
(`replace_known` off): a replaced entry would not be a draw of the policy's step.
"""

from __future__ import annotations

import torch

from anisora.backbones.base import Conditioning
from anisora.config.errors import ConfigError
from anisora.config.schema import GRPOConfig
from anisora.diffusion.sampling import (
    RolloutStep,
    SamplerSpec,
    build_stepper,
    flow_sde_mean_std,
    guided_output,
    sde_log_prob,
)
from anisora.methods.preference.losses import clipped_policy_loss, gaussian_step_kl, group_advantages
from anisora.methods.preference.rounds import PreferenceMethod, RoundSamples, seed_of

SDE_SAMPLER = "flow_sde"


class GRPOMethod(PreferenceMethod):
    settings_class = GRPOConfig
    records_trajectory = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if SDE_SAMPLER not in self.objective.samplers:
            raise ConfigError("rl", f"GRPO samples with the {SDE_SAMPLER} SDE, which a {self.objective.name} model "
                                    "has not: use rl=gapo, rl=dpo or rl=rwr")

    def rollout_spec(self) -> SamplerSpec:
        return self.checkpoint_sampler(name=SDE_SAMPLER, noise_level=self.settings.noise_level, replace_known=False)

    def trained_steps(self, stochastic: list[int]) -> list[int]:
        """The SDE steps this round trains: all, or a seeded draw of `train_steps` of them (DanceGRPO)."""
        count = self.settings.train_steps
        if count is None or count >= len(stochastic):
            return stochastic
        gen = torch.Generator().manual_seed(seed_of(self.rounds_done, 17))
        return sorted(stochastic[i] for i in torch.randperm(len(stochastic), generator=gen)[:count].tolist())

    def step_distribution(self, role: str, step: RolloutStep, index: int, sigmas: list[float], cond: Conditioning,
                          uncond: Conditioning | None, spec: SamplerSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the SDE step `index` from the recorded latents, as `role` computes it now: the same
        guided call the rollout made (so the ratio is 1 before any update)."""
        backbone, x = self.backbone, step.latents
        dtype = cond.text.dtype
        sigma, sigma_next = sigmas[index], sigmas[index + 1]
        use_cfg = uncond is not None and spec.guidance_scale != 1.0 and sigma >= spec.guidance_min_sigma
        backbone.current_timestep = int(step.timestep[0])
        with self.roles.use(role):
            out = guided_output(backbone, x, step.timestep, cond, uncond if use_cfg else None, spec.guidance_scale,
                                dtype)
        std_sigma = sigma if sigma < 1 else sigmas[1]
        return flow_sde_mean_std(x, out, sigma, sigma_next, spec.noise_level, std_sigma)

    def update(self, samples: RoundSamples) -> None:
        s, traj = self.settings, samples.trajectory
        spec = self.rollout_spec()
        sigmas = build_stepper(self.objective, spec, self.device).sigmas
        adv = group_advantages(samples.rewards, samples.group_size, clip=s.advantage_clip).to(self.device)
        trained = self.trained_steps([j for j, st in enumerate(traj.steps) if st.log_prob is not None])
        with torch.no_grad():
            reference = {j: self.step_distribution("reference", traj.steps[j], j, sigmas, samples.cond,
                                                   samples.uncond, spec)[0] for j in trained}
        for u in range(s.updates_per_round):
            loss = torch.zeros((), device=self.device)
            ratio_dev, kl_sum, clip_frac = 0.0, 0.0, 0.0
            for j in trained:
                step = traj.steps[j]
                mean, std = self.step_distribution("policy", step, j, sigmas, samples.cond, samples.uncond, spec)
                policy_loss, stats = clipped_policy_loss(sde_log_prob(step.next_latents, mean, std), step.log_prob,
                                                         adv, s.clip_range)
                kl = gaussian_step_kl(mean, reference[j], std).mean()
                loss = loss + (policy_loss + s.kl_weight * kl) / len(trained)
                ratio_dev = max(ratio_dev, float(stats["ratio_dev"]))
                kl_sum += float(kl.detach())
                clip_frac += float(stats["clip_frac"]) / len(trained)
            if u == 0:
                ratio_dev_first = ratio_dev  # 0 up to rounding: nothing changed yet
            self.step_role("policy", loss)
        self.log_update({"ratio_dev_first": ratio_dev_first, "loss": loss.detach(),
                         "kl": kl_sum / max(1, len(trained)), "ratio_dev": ratio_dev, "clip_frac": clip_frac,
                         "advantage_nonzero": (adv != 0).float().mean()}, maxima=("ratio_dev_first", "ratio_dev"))
