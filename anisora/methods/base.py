"""DiffusionMethod: what every training method shares, so SFT, distillation, reward models and preference tuning
are small subclasses that write only their losses.

It builds the backbone from its config (kept in the hyper-parameters, with the method's own class, so any
checkpoint reloads as what it was), its denoiser roles (`anisora.backbones.roles`), optimizers and schedulers per
trainable role, gradient clipping, the EMA role, encoder parking when training from shards, sequence parallelism,
and the ONE batch preparation (`prepare_batch`) for synthetic and shard batches alike. Every random draw of a
training sample (guide frames, caption dropout, and later the noise level and noise) comes from a generator seeded
by that sample's own seed, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from anisora.accelerators.strategies import adamw_class, clip_sharded_gradients
from anisora.backbones import Conditioning, build_backbone
from anisora.backbones.frozen_dtype import cast_frozen_weights, keep_master_weights_fp32
from anisora.backbones.lora import lora_rank
from anisora.backbones.roles import Roles, role_specs
from anisora.config.errors import ConfigError
from anisora.diffusion.sampling import SamplerSpec
from anisora.guidance.fold import latent_slot_mask
from anisora.guidance.pair import pair_from_video
from anisora.guidance.policy import TrainGuidePolicy
from anisora.guidance.spec import stored_mode_slots

NO_GUIDE = "none"  # the stored no-guide conditioning of a shard batch (anisora.data.shard_format)
log = logging.getLogger("anisora.train")


@dataclass
class TrainBatch:
    """A training batch after the per-sample guide and caption draws, on the device."""

    x0: torch.Tensor  # clean latents (B, C, T, h, w)
    cond: Conditioning
    captions: list[str]  # after caption dropout ("" = dropped)
    slots: torch.Tensor  # (B, 1, T, h, w): 1 on latent cells whose frames were given as guides
    generators: list[torch.Generator]  # each sample's generator, after the draws above (losses draw on from it)
    known: tuple[torch.Tensor, torch.Tensor] | None = None  # latent entries the guide fixes (pixel-exact codecs)

    def __len__(self) -> int:
        return len(self.captions)

    def per_sample_noise(self) -> torch.Tensor:
        """Unit Gaussian noise of the latents' shape, one draw per sample from its own generator."""
        parts = [torch.randn(self.x0.shape[1:], generator=g) for g in self.generators]
        return torch.stack(parts).to(self.x0.device, self.x0.dtype)

    def unconditional(self, null_text: torch.Tensor) -> Conditioning:
        """The same guide with the empty prompt's embedding (the CFG branch)."""
        return Conditioning(text=null_text.expand(len(self), *null_text.shape[1:]).to(self.cond.text.dtype),
                            guide=self.cond.guide, image=self.cond.image)


class DiffusionMethod(pl.LightningModule):
    """The shared LightningModule; subclasses set `roles` and write `training_step`. Configs are plain dicts so a
    checkpoint rebuilds the method without Hydra."""

    #: the denoiser roles a method needs; the first trainable one is the primary (exported, sampled by default)
    role_names: tuple[str, ...] = ("student",)
    #: the role the EMA (optimizer.ema_decay > 0) follows; None: no EMA for this method
    ema_follows: str | None = "student"

    def __init__(self, model: dict[str, Any], guide: dict[str, Any], optimizer: dict[str, Any],
                 sampler: dict[str, Any], max_steps: int, data: dict[str, Any] | None = None,
                 sequence_parallel: int = 1, frozen_dtype: str = "float32", roles_mode: str = "auto",
                 init_from: str | None = None, role_lora: dict[str, Any] | None = None,
                 role_optimizers: dict[str, dict[str, Any]] | None = None, initialised_from: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()  # `data` tells infer.py the clip size (and world) it was trained on
        lora = {**(model.get("lora") or {}), **(role_lora or {})}
        mode = roles_mode if roles_mode != "auto" else ("lora_shared_base" if lora_rank(lora) > 0 else "full")
        frozen = getattr(torch, frozen_dtype)
        # a base that never trains is built in its frozen dtype: Wan-14B's would not fit an 80 GB card in fp32
        self.backbone = build_backbone(model, frozen if mode == "lora_shared_base" else None)
        if init_from:  # before the roles exist, so every role (teacher, student, critic, EMA) starts from it
            load_sampled_weights(self.backbone, init_from)
        self.policy = TrainGuidePolicy(
            p_random_main=guide["p_random_main"], p_second=guide["p_second"],
            p_drop_guides=guide["p_drop_guides"], p_drop_text=guide["p_drop_text"],
            p_region=float(guide.get("p_region", 0.0)),
        )
        self.sampler_spec = SamplerSpec(**sampler)
        self.ema_decay = float(optimizer.get("ema_decay", 0.0)) if self.ema_follows else 0.0
        specs = role_specs(list(self.role_names), self.ema_follows if self.ema_decay > 0 else None)
        self.roles = Roles(self.backbone, specs, mode, lora, int(model.get("init_seed", 0)))
        cast_frozen_weights(self.backbone, frozen)
        keep_master_weights_fp32(self.backbone)
        objective = model.get("objective") or {}
        self.motion_weight = float(objective.get("motion_weight", 0.0))
        self.guide_weight = float(objective.get("guide_weight", 0.0))
        self.log_videos = True  # validation videos go to W&B when a W&B logger is attached
        self.batches_seen = 0  # training batches consumed (the data position)
        data = data or {}
        # training on precomputed shards needs no encoder: the frozen ones wait on the CPU (validation borrows them)
        self.park_encoders = data.get("kind") == "shards" and not data.get("encoders_on_device", False)

    @property
    def objective(self):
        return self.backbone.objective

    @property
    def sample_role(self) -> str:
        """The role validation and inference sample: the EMA when there is one."""
        return "ema" if "ema" in self.roles else self.roles.primary

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Checks of the method's options that need no model; train.py runs them before building anything."""
        from omegaconf import OmegaConf

        check_init_from(cfg.method.get("init_from"), OmegaConf.to_container(cfg.model, resolve=True))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The method's class beside its hyper-parameters, so `inference.loading` rebuilds exactly this method;
        the training batches consumed so far, which the data modules resume from. The starting checkpoint is
        recorded but not reloaded from a checkpoint that already holds every role's weights."""
        checkpoint["method_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["batches_seen"] = self.batches_seen
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None and hparams.get("init_from"):
            checkpoint["hyper_parameters"] = {**hparams, "init_from": None, "initialised_from": hparams["init_from"]}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batches_seen = int(checkpoint.get("batches_seen", 0))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Count batches, not optimizer steps: a method with several optimizers (or a critic that steps more
        often than its student) takes a varying number of steps per batch."""
        self.batches_seen += 1

    # ----------------------------------------------------------------- batches
    def prepare_batch(self, batch: dict[str, Any]) -> TrainBatch:
        """Per-sample guide and caption draws -> latents and conditioning: pixels are encoded here, shard batches
        bring latents and stored conditioning (one of the stored guide modes per sample, or none)."""
        with torch.no_grad():
            if "latents" in batch:
                return self._stored_batch(batch)
            return self._pixel_batch(batch)

    def _pixel_batch(self, batch: dict[str, Any]) -> TrainBatch:
        video = batch["video"]
        captions, guides, masks, generators = [], [], [], []
        x0 = self.backbone.encode_video(video)
        for i, seed in enumerate(batch["seed"]):
            gen = torch.Generator("cpu").manual_seed(int(seed))
            draw = self.policy.draw(video.shape[2], gen)
            g, m = pair_from_video(video[i].cpu(), draw.frames, draw.region)
            guides.append(g)
            masks.append(m)
            captions.append("" if draw.drop_text else batch["caption"][i])
            generators.append(gen)
        guide, mask = torch.stack(guides).to(self.device), torch.stack(masks).to(self.device)
        cond = self.backbone.conditioning(captions, guide, mask)
        slots = latent_slot_mask(mask, self.backbone.temporal_factor, x0.shape[-2], x0.shape[-1]).to(x0.dtype)
        known = self.backbone.known_latents(guide, mask) if self.sampler_spec.replace_known else None
        return TrainBatch(x0, cond, captions, slots, generators, known)

    def _stored_batch(self, batch: dict[str, Any]) -> TrainBatch:
        dtype = next(self.backbone.denoiser.parameters()).dtype  # stored bf16 meets fp32 weights under mixed precision
        x0 = batch["latents"].to(dtype)
        modes = [m for m in batch["guides"] if m != NO_GUIDE]
        images, texts = batch.get("images") or {}, batch.get("text")
        captions, guides, image_rows, text_rows, generators = [], [], [], [], []
        slots = torch.zeros(x0.shape[0], 1, *x0.shape[2:], device=x0.device, dtype=x0.dtype)
        for i, seed in enumerate(batch["seed"]):
            gen = torch.Generator("cpu").manual_seed(int(seed))
            mode, drop_text = self.policy.draw_stored(modes, gen)
            key = mode or NO_GUIDE
            guides.append(batch["guides"][key][i])
            if images:
                image_rows.append(images[key][i])
            if texts is not None:
                text_rows.append(batch["null_text"][i] if drop_text else texts[i])
            captions.append("" if drop_text else batch["caption"][i])
            slots[i, :, stored_mode_slots(mode, self.backbone.temporal_factor, x0.shape[2])] = 1.0
            generators.append(gen)
        text = torch.stack(text_rows).to(dtype) if text_rows else self.backbone.encode_prompt(captions)
        image = torch.stack(image_rows).to(dtype) if image_rows else None
        cond = Conditioning(text=text, guide=torch.stack(guides).to(dtype), image=image)
        return TrainBatch(x0, cond, captions, slots, generators)

    def with_text_gradients(self, inputs: TrainBatch) -> Conditioning:
        """The batch's conditioning, its text encoded again with gradients when the text encoder trains."""
        cond = inputs.cond
        if any(m is not self.backbone.denoiser for m in self.backbone.trainable_modules()):
            cond = Conditioning(text=self.backbone.encode_prompt(inputs.captions), guide=cond.guide, image=cond.image)
        return cond

    # ----------------------------------------------------------------- optimisation
    def trainable_roles(self) -> list[str]:
        """Roles with an optimizer of their own, primary first."""
        return [s.name for s in self.roles.specs.values() if s.trainable]

    def role_parameters(self, role: str) -> list[torch.nn.Parameter]:
        """What `role`'s optimizer updates: the role's weights, plus any other trainable module of the backbone
        (a text encoder that trains) for the primary role."""
        params = self.roles.parameters_of(role)
        if role == self.roles.primary:
            extra = [m for m in self.backbone.trainable_modules() if m is not self.backbone.denoiser]
            params += [p for m in extra for p in m.parameters() if p.requires_grad]
        return params

    def optimizer_settings(self, role: str) -> dict[str, Any]:
        """The `optimizer` config with `role_optimizers[role]` on top (lr, betas, weight_decay, eps, warmup_steps,
        and `schedule`: warmup_cosine, the default, or constant)."""
        overrides = (self.hparams.get("role_optimizers") or {}).get(role) or {}
        return {**dict(self.hparams.optimizer), **dict(overrides)}

    def configure_optimizers(self):
        """One AdamW and warm-up-then-cosine schedule per trainable role (a list when there are several: the
        method then optimizes manually)."""
        adamw = adamw_class(self.trainer.strategy if self._trainer is not None else None)
        total = int(self.hparams.max_steps)
        configs = []
        for role in self.trainable_roles():
            cfg = self.optimizer_settings(role)
            opt = adamw(self.role_parameters(role), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                        weight_decay=cfg["weight_decay"], eps=cfg["eps"])
            factor = constant if cfg.get("schedule") == "constant" else warmup_cosine(int(cfg["warmup_steps"]), total)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            configs.append({"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}})
        return configs[0] if len(configs) == 1 else configs

    def optimizer_step(self, *args, **kwargs) -> None:
        """EMA follows each optimizer step here (not in on_train_batch_end, which runs after the checkpoint
        callback), so a checkpoint's EMA matches its weights and resume is exact."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    def update_ema(self) -> None:
        if self.ema_decay > 0:
            self.roles.update_ema(self.ema_decay)

    def step_role(self, role: str, loss: torch.Tensor) -> None:
        """One manual optimisation step of `role` on `loss`, for methods with several optimizers (set
        `automatic_optimization = False`): backward, norm clipping at `trainer.gradient_clip_val` (over every
        rank's shard when sharded), the role's optimizer and scheduler, and the EMA when it follows `role`."""
        index = self.trainable_roles().index(role)
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        opt = optimizers[index] if isinstance(optimizers, list) else optimizers
        sched = schedulers[index] if isinstance(schedulers, list) else schedulers
        opt.zero_grad()
        self.manual_backward(loss * self.loss_scale())
        clip = float(getattr(self, "gradient_clip_val", 0.0) or 0.0)
        if clip and not clip_sharded_gradients(self.trainer.strategy, clip):
            self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()
        if role == self.ema_follows:
            self.update_ema()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping everywhere; a sharded model's norm spans every rank's shard (FSDP clips at its root)."""
        if gradient_clip_val and clip_sharded_gradients(self.trainer.strategy, float(gradient_clip_val)):
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def loss_scale(self) -> int:
        """Factor on every loss under sequence parallelism (see configure_model)."""
        return int(self.hparams.get("sequence_parallel", 1))

    # ----------------------------------------------------------------- sequence parallel
    def configure_model(self) -> None:
        """Split each sample's token sequence over groups of `sequence_parallel` ranks (Ulysses all-to-all over
        heads, diffusers' context parallel) once the process group exists. Every rank of a group holds the whole
        loss but only its shard's share of each gradient; DDP averages over all ranks, so losses are scaled by
        the group size (`loss_scale`) and the averaged gradient is the data-parallel mean."""
        sp = int(self.hparams.get("sequence_parallel", 1))
        if sp == 1 or getattr(self, "_sequence_split", False):
            return
        from anisora.accelerators.distributed import sequence_parallel_mesh
        from anisora.inference.speedups.context_parallel import enable

        mesh = sequence_parallel_mesh(sp, self.trainer.strategy.root_device, self.trainer.node_rank)
        enable(self.backbone.denoiser, sp, mesh=mesh)
        self._sequence_split = True
        if self.trainer.is_global_zero:
            log.info("sequence parallel: each sample's tokens split over %d ranks", sp)

    # ----------------------------------------------------------------- encoder placement
    def frozen_encoders(self) -> list[torch.nn.Module]:
        """Encoding modules with no trainable parameter (VAE, frozen text and image encoders)."""
        return [m for m in self.backbone.encoding_modules()
                if not any(p.requires_grad for p in m.parameters()) and any(True for _ in m.parameters())]

    def on_fit_start(self) -> None:
        """With shards, move the frozen encoders off the device once Lightning has placed the model. Sharded
        strategies (FSDP, DeepSpeed) own every parameter's placement, so there they stay."""
        strategy = type(self.trainer.strategy).__name__ if self._trainer is not None else ""
        if self.park_encoders and not any(name in strategy for name in ("FSDP", "DeepSpeed")):
            for module in self.frozen_encoders():
                module.to("cpu")
            if self.device.type != "cpu":
                from anisora.accelerators.devices import empty_cache

                empty_cache()

    @contextlib.contextmanager
    def encoders_on_device(self):
        """Frozen encoders on the training device inside the block (validation sampling), parked again after."""
        moved = [m for m in self.frozen_encoders() if next(m.parameters()).device != self.device]
        for module in moved:
            module.to(self.device)
        try:
            yield
        finally:
            for module in moved:
                module.to("cpu")

    # ----------------------------------------------------------------- sampling
    def sampling_weights(self):
        """Sample as `sample_role` inside the block (training weights are untouched)."""
        return self.roles.use(self.sample_role)

    def prepare_for_inference(self) -> None:
        """Put the sampled role's weights into the primary role (infer.py and exports after loading)."""
        self.roles.merge_into_primary(self.sample_role)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from anisora.methods.validation import validate_samples

        validate_samples(self, batch)


def constant(step: int) -> float:
    """The LambdaLR factor of a constant learning rate (the distillation anchors' schedule)."""
    return 1.0


def load_sampled_weights(backbone, path: str) -> None:
    """Put the weights a train.py checkpoint samples with (its EMA when it has one) into `backbone`'s denoiser:
    a distillation's teacher, an RL policy's starting point. The checkpoint must be of the same family and size."""
    from anisora.inference.loading import load_model

    source = load_model(Path(path), torch.device("cpu"), torch.float32).backbone.denoiser
    if getattr(source, "peft_config", None):
        raise ConfigError("method.init_from", f"{path} trained LoRA adapters; merge them first (export the merged "
                          "pipeline and pass it as model.ckpt)")
    missing, unexpected = backbone.denoiser.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError("method.init_from", f"{path} holds another architecture than model= builds "
                          f"({len(missing)} missing, {len(unexpected)} unexpected weights)")


def check_init_from(path: str | None, model_cfg: dict[str, Any], key: str = "method.init_from") -> None:
    """A starting checkpoint that exists and is of the configured model family (no model is built)."""
    if not path:
        return
    from anisora.inference.loading import read_hparams

    if not Path(path).is_file():
        raise ConfigError(key, f"{path} does not exist (expected a train.py checkpoint, e.g. "
                          "outputs/train/<time>/checkpoints/last.ckpt)")
    theirs = read_hparams(Path(path))["model"]
    if theirs.get("kind") != model_cfg.get("kind"):
        raise ConfigError(key, f"{path} is a {theirs.get('kind')!r} model but model= builds a "
                          f"{model_cfg.get('kind')!r} one (choose the teacher's model=)")


def warmup_cosine(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10 % at `total` steps (a LambdaLR factor)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
