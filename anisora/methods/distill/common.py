"""What every distillation method shares: a frozen teacher role, its classifier-free guidance, the student's
step grid (the sampler's exact sigma list) and the collapse guard at validation.

The teacher is the checkpoint `method.teacher` names (a train.py checkpoint; its EMA weights when it has one),
or the weights `model.ckpt` loads when no teacher file is given: every role starts from it. Teacher CFG follows
the Ho-Salimans convention, uncond + g (cond - uncond); the legacy form cond + w (cond - uncond) that some
anchors quote is g = w + 1.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from anisora.backbones import Conditioning
from anisora.backbones.memory import check_roles_fit
from anisora.config.errors import ConfigError
from anisora.diffusion.objectives import build_objective
from anisora.diffusion.sampling import SamplerSpec, guided, rollout
from anisora.diffusion.schedules import check_sampler, resolved_sigmas
from anisora.inference.loading import read_hparams
from anisora.methods.base import DiffusionMethod, TrainBatch
from anisora.methods.validation import validate_samples, validation_clips

log = logging.getLogger("anisora.train")


class DistillMethod(DiffusionMethod):
    """A student (and optional critic) distilled from a frozen teacher role over one base."""

    role_names = ("student", "teacher")
    ema_follows = "student"
    #: whether the student samples on an exact few-step grid (`sampler.sigmas` or `sampler.schedule`)
    needs_grid = True

    def __init__(self, *args: Any, teacher: str | None = None, teacher_guidance: float = 5.0,
                 teacher_sampler: dict[str, Any] | None = None, collapse_floor: float = 0.0,
                 **kwargs: Any) -> None:
        kwargs.setdefault("init_from", teacher)
        super().__init__(*args, **kwargs)
        self.teacher_guidance = float(teacher_guidance)
        self.collapse_floor = float(collapse_floor)
        if teacher_sampler is None:  # the sampler the teacher was trained and validated with, kept for reloads
            teacher_sampler = read_hparams(Path(teacher))["sampler"] if teacher else {}
            self.hparams["teacher_sampler"] = teacher_sampler
        self.teacher_spec = SamplerSpec(**teacher_sampler)
        self.grid = resolved_sigmas(self.sampler_spec) if self.needs_grid else None
        self._teacher_motion: dict[int, float] = {}
        self._null_text: torch.Tensor | None = None

    # ----------------------------------------------------------------- checks before any model exists
    @classmethod
    def check_config(cls, cfg: Any) -> None:
        from omegaconf import OmegaConf

        method = cfg.method
        teacher = method.get("teacher") or method.get("init_from")
        model = OmegaConf.to_container(cfg.model, resolve=True)
        if not teacher and not model.get("ckpt") and model.get("init") != "random":
            raise ConfigError("method.teacher", "a distillation needs a teacher: method.teacher=<train.py checkpoint> "
                              "or model.ckpt=<diffusers weights>")
        from anisora.methods.base import check_init_from

        check_init_from(teacher, model, "method.teacher")
        objective = build_objective(model.get("objective"))
        if "euler_renoise" not in objective.samplers:  # the student's grid rollout steps on exact noise levels
            raise ConfigError("model.objective.name", f"{cls.__name__} distils flow-matching models (Wan), this "
                              f"model uses {objective.name!r}")
        spec = SamplerSpec(**OmegaConf.to_container(cfg.sampler, resolve=True))
        check_sampler(spec)
        if cls.needs_grid and resolved_sigmas(spec) is None:
            raise ConfigError("sampler.sigmas", "the student trains on an exact step list: use sampler=few_step_4 "
                              "(or set sampler.sigmas / sampler.schedule)")
        if float(method.get("teacher_guidance", 5.0)) < 1.0:
            raise ConfigError("method.teacher_guidance", "expected >= 1 (uncond + g (cond - uncond); 1 = no CFG)")
        mode = method.get("roles_mode", "auto")
        if mode == "full":
            trainable = sum(r != "teacher" for r in cls.role_names)
            check_roles_fit(model, cfg.accelerator.name, cfg.accelerator.precision, trainable, 1,
                            shards=int(cfg.accelerator.devices) if "fsdp" in cfg.strategy.name else 1)

    # ----------------------------------------------------------------- teacher
    def null_text(self, batch: dict[str, Any], inputs: TrainBatch) -> torch.Tensor:
        """The empty prompt's embedding (stored in shard batches; encoded once otherwise)."""
        if "null_text" in batch:
            return batch["null_text"][:1].to(inputs.cond.text)
        if self._null_text is None:
            self._null_text = self.backbone.encode_prompt([""]).detach()
        return self._null_text.to(inputs.cond.text)

    def denoise_as(self, role: str, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """`role`'s model output at noise `level` (per sample), float32."""
        dtype = next(self.backbone.denoiser.parameters()).dtype
        with self.roles.use(role):
            out = self.backbone.denoise(x_t.to(dtype), self.objective.model_timestep(level).to(self.device), cond)
        return out.float()

    @torch.no_grad()
    def teacher_branches(self, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning, uncond: Conditioning
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's conditional and unconditional outputs, in one batched call."""
        both = self.denoise_as("teacher", torch.cat([x_t, x_t]), torch.cat([level, level]),
                               Conditioning.cat([cond, uncond]))
        cond_out, uncond_out = both.chunk(2)
        return cond_out, uncond_out

    def guidance_scales(self, level: torch.Tensor) -> torch.Tensor:
        """Per-sample teacher CFG scale: `teacher_guidance` where the teacher's own sampler guides (noise share
        >= its guidance_min_sigma), 1 elsewhere."""
        guide_here = self.objective.noise_std(level) >= self.teacher_spec.guidance_min_sigma
        return torch.where(guide_here, self.teacher_guidance, 1.0)

    @torch.no_grad()
    def teacher_output(self, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning, uncond: Conditioning
                       ) -> torch.Tensor:
        """The teacher's guided output (`guidance_scales`); the uncond pass is skipped where no sample needs it."""
        scale = self.guidance_scales(level)
        if bool((scale == 1.0).all()):
            return self.denoise_as("teacher", x_t, level, cond)
        cond_out, uncond_out = self.teacher_branches(x_t, level, cond, uncond)
        return guided(cond_out, uncond_out, scale.view(-1, *([1] * (x_t.ndim - 1))).to(cond_out))

    def student_x0(self, inputs: TrainBatch, index: int, grad: bool, start: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """The student's clean estimate at grid step `index`: from pure noise, the student runs the grid down to
        that step without gradients, re-noising each estimate with fresh noise (DMD2's backward simulation, so
        no data is needed), then one step with gradients. With `start` (noised data at that step) it is one call."""
        grid = self.grid[: index + 1] if start is None else self.grid[index : index + 1]
        spec = SamplerSpec(name="euler_renoise", num_steps=len(grid), sigmas=grid, guidance_scale=1.0,
                           replace_known=self.sampler_spec.replace_known)
        with self.roles.use("student"):
            out = rollout(self.backbone, inputs.cond, None, tuple(inputs.x0.shape[1:]), spec,
                          generators=inputs.generators, known=inputs.known, grad=grad, grad_steps=1, start=start)
        return out.latents

    # ----------------------------------------------------------------- validation and the collapse guard
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The student's samples and scores, its motion next to the teacher's (sampled once per validation
        batch with the teacher's sampler), and a stop when the student has collapsed to near-static video."""
        metrics = validate_samples(self, batch)
        if batch_idx not in self._teacher_motion:
            self._teacher_motion[batch_idx] = validation_clips(self, batch, self.teacher_spec, "teacher")[2]["motion"]
        teacher, student = self._teacher_motion[batch_idx], metrics["motion"]
        ratio = student / teacher if teacher > 0 else math.nan
        bs = len(batch["caption"])
        self.log("val/teacher_motion", teacher, batch_size=bs)
        self.log("val/motion_ratio", ratio, batch_size=bs)
        trainer = self.trainer
        if self.collapse_floor > 0 and not trainer.sanity_checking and ratio < self.collapse_floor:
            log.error("collapse: the student's motion is %.3f of the teacher's (%.3f vs %.3f), below "
                      "method.collapse_floor=%.2f; stopping", ratio, student, teacher, self.collapse_floor)
            trainer.should_stop = True

    # ----------------------------------------------------------------- export
    def on_train_end(self) -> None:
        """The student for people (its EMA when there is one): `export/` in the run folder, a diffusers folder
        (full roles) or LoRA safetensors (adapter roles) with the scheduler that makes a stock pipeline sample
        its grid. Models without a diffusers pipeline (the tiny ones) and sharded weights export nothing."""
        trainer = self.trainer
        sharded = any(n in type(trainer.strategy).__name__ for n in ("FSDP", "DeepSpeed"))
        if not trainer.is_global_zero or sharded:
            return
        dst = Path(trainer.default_root_dir) / "export"
        try:
            self.roles.export(self.sample_role, dst, overwrite=True, sampler=self.sampler_spec)
        except ConfigError as ex:
            log.info("no export of the student: %s", ex)
            return
        log.info("student exported to %s (sample with %d steps, guidance 1)", dst, self.sampler_spec.num_steps)
