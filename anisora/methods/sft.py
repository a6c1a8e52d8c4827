"""Supervised fine-tuning (and training from scratch) with the backbone's objective.

Every random draw of a training sample (guide frames, caption dropout, noise level, noise) comes
from a generator seeded by that sample's own seed, so a resumed run repeats an uninterrupted one.
Batches from shards carry latents and precomputed conditioning instead of pixels: then the draw picks
one of the stored guide modes and no encoder runs (unless the model trains its text encoder).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch

from anisora.accelerators.strategies import adamw_class, clip_sharded_gradients
from anisora.backbones import Conditioning, build_backbone
from anisora.backbones.frozen_dtype import cast_frozen_weights
from anisora.diffusion.flow_matching import (
    combine_weights,
    guide_loss_weight,
    motion_loss_weight,
    noisy_sample,
    sample_sigmas,
    timesteps_from_sigmas,
    weighted_mse,
)
from anisora.diffusion.sampling import SamplerSpec
from anisora.guidance.fold import latent_slot_mask
from anisora.guidance.pair import pair_from_video
from anisora.guidance.policy import TrainGuidePolicy
from anisora.guidance.spec import stored_mode_slots

NO_GUIDE = "none"  # the stored no-guide conditioning of a cached batch (anisora.data.shard_format)


log = logging.getLogger("anisora.train")


def ema_copy(denoiser: torch.nn.Module) -> torch.nn.Module:
    """The EMA denoiser: its own copy of every trainable weight; frozen weights (a LoRA base) are the same
    Parameter objects as the denoiser's, so EMA under LoRA costs the adapters' size, not a second base model
    (a checkpoint still lists them under `ema.*`; torch.save stores shared tensors once)."""
    shared = {id(p): p for p in denoiser.parameters() if not p.requires_grad}
    return copy.deepcopy(denoiser, memo=shared).requires_grad_(False)


class SFTMethod(pl.LightningModule):
    """Flow-matching SFT of any backbone adapter; configs are plain dicts so checkpoints rebuild it."""

    def __init__(self, model: dict[str, Any], guide: dict[str, Any], optimizer: dict[str, Any],
                 sampler: dict[str, Any], max_steps: int, data: dict[str, Any] | None = None,
                 sequence_parallel: int = 1, frozen_dtype: str = "float32") -> None:
        super().__init__()
        self.save_hyperparameters()  # `data` tells infer.py the clip size (and world) it was trained on
        self.backbone = build_backbone(model)
        cast_frozen_weights(self.backbone, getattr(torch, frozen_dtype))
        objective = model.get("objective", {})
        self.shift = float(objective.get("shift", 1.0))
        self.timestep_sampling = str(objective.get("timestep_sampling", "uniform"))
        self.motion_weight = float(objective.get("motion_weight", 0.0))
        self.guide_weight = float(objective.get("guide_weight", 0.0))
        self.policy = TrainGuidePolicy(
            p_random_main=guide["p_random_main"], p_second=guide["p_second"],
            p_drop_guides=guide["p_drop_guides"], p_drop_text=guide["p_drop_text"],
            p_region=float(guide.get("p_region", 0.0)),
        )
        self.sampler_spec = SamplerSpec(**sampler)
        self.ema_decay = float(optimizer.get("ema_decay", 0.0))
        self.ema = ema_copy(self.backbone.denoiser) if self.ema_decay > 0 else None
        self.log_videos = True  # validation videos go to W&B when a W&B logger is attached
        data = data or {}
        # training on precomputed shards needs no encoder: the frozen ones wait on the CPU (validation borrows them)
        self.park_encoders = data.get("kind") == "shards" and not data.get("encoders_on_device", False)

    # ----------------------------------------------------------------- training
    def training_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample draws -> model inputs and targets."""
        if "latents" in batch:
            return self.cached_training_batch(batch)
        video = batch["video"]
        frames = video.shape[2]
        captions, guides, masks, noises, sigmas = [], [], [], [], []
        x0 = self.backbone.encode_video(video)
        for i, seed in enumerate(batch["seed"]):
            gen = torch.Generator("cpu").manual_seed(int(seed))
            draw = self.policy.draw(frames, gen)
            g, m = pair_from_video(video[i].cpu(), draw.frames, draw.region)
            guides.append(g)
            masks.append(m)
            captions.append("" if draw.drop_text else batch["caption"][i])
            sigmas.append(sample_sigmas(1, self.shift, gen, self.timestep_sampling))
            noises.append(torch.randn(x0.shape[1:], generator=gen))
        sigma = torch.cat(sigmas).to(self.device)
        noise = torch.stack(noises).to(self.device, x0.dtype)
        guide, mask = torch.stack(guides).to(self.device), torch.stack(masks).to(self.device)
        cond = self.backbone.conditioning(captions, guide, mask)
        noisy, target = noisy_sample(x0, noise, sigma)
        slots = latent_slot_mask(mask, self.backbone.temporal_factor, x0.shape[-2], x0.shape[-1]).to(x0.dtype)
        weight = combine_weights(motion_loss_weight(x0, self.motion_weight, self.backbone.residual_latents),
                                 guide_loss_weight(slots, self.guide_weight))
        return {"noisy": noisy, "target": target, "timestep": timesteps_from_sigmas(sigma), "cond": cond,
                "captions": captions, "weight": weight}

    def cached_training_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The same draws on a shard batch: latents as they are, a stored guide mode per sample (or none),
        the stored empty-prompt embedding when the caption is dropped."""
        dtype = next(self.backbone.denoiser.parameters()).dtype  # stored bf16 meets fp32 weights under mixed precision
        x0 = batch["latents"].to(dtype)
        modes = [m for m in batch["guides"] if m != NO_GUIDE]
        images = batch.get("images") or {}
        texts = batch.get("text")
        captions, guides, image_rows, text_rows, noises, sigmas, slots = [], [], [], [], [], [], []
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
            slots.append(stored_mode_slots(mode, self.backbone.temporal_factor, x0.shape[2]))
            sigmas.append(sample_sigmas(1, self.shift, gen, self.timestep_sampling))
            noises.append(torch.randn(x0.shape[1:], generator=gen))
        sigma = torch.cat(sigmas).to(self.device)
        noise = torch.stack(noises).to(self.device, x0.dtype)
        text = torch.stack(text_rows).to(dtype) if text_rows else self.backbone.encode_prompt(captions)
        image = torch.stack(image_rows).to(dtype) if image_rows else None
        cond = Conditioning(text=text, guide=torch.stack(guides).to(dtype), image=image)
        noisy, target = noisy_sample(x0, noise, sigma)
        slot_mask = torch.zeros(x0.shape[0], 1, *x0.shape[2:], device=x0.device, dtype=x0.dtype)
        for i, taken in enumerate(slots):
            slot_mask[i, :, taken] = 1.0
        weight = combine_weights(motion_loss_weight(x0, self.motion_weight, self.backbone.residual_latents),
                                 guide_loss_weight(slot_mask, self.guide_weight))
        return {"noisy": noisy, "target": target, "timestep": timesteps_from_sigmas(sigma), "cond": cond,
                "captions": captions, "weight": weight}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            inputs = self.training_batch(batch)
        cond = inputs["cond"]
        if any(m is not self.backbone.denoiser for m in self.backbone.trainable_modules()):
            cond.text = self.backbone.encode_prompt(inputs["captions"])  # again, with gradients
        pred = self.backbone.denoise(inputs["noisy"], inputs["timestep"], cond)
        loss = weighted_mse(pred.float(), inputs["target"].float(), inputs["weight"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["seed"]))
        return loss * int(self.hparams.get("sequence_parallel", 1))  # see configure_model

    def optimizer_step(self, *args, **kwargs) -> None:
        """EMA follows each optimizer step here (not in on_train_batch_end, which runs after the
        checkpoint callback), so a checkpoint's EMA matches its weights and resume is exact."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            with torch.no_grad():  # the trainable weights only: with LoRA, the adapters
                for e, p in zip(self.ema.parameters(), self.backbone.denoiser.parameters()):
                    if p.requires_grad:
                        e.lerp_(p.detach(), 1.0 - self.ema_decay)

    def configure_optimizers(self):
        cfg = self.hparams.optimizer
        params = [p for m in self.backbone.trainable_modules() for p in m.parameters() if p.requires_grad]
        adamw = adamw_class(self.trainer.strategy if self._trainer is not None else None)
        opt = adamw(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"], eps=cfg["eps"])
        warmup, total = int(cfg["warmup_steps"]), int(self.hparams.max_steps)

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 10 %
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping everywhere; a sharded model's norm spans every rank's shard (FSDP clips at its root)."""
        if gradient_clip_val and clip_sharded_gradients(self.trainer.strategy, float(gradient_clip_val)):
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ----------------------------------------------------------------- sequence parallel
    def configure_model(self) -> None:
        """Split each sample's token sequence over groups of `sequence_parallel` ranks (Ulysses all-to-all over
        heads, diffusers' context parallel) once the process group exists. Every rank of a group holds the whole
        loss but only its shard's share of each gradient; DDP averages over all ranks, so `training_step`
        scales the loss by the group size and the averaged gradient is the data-parallel mean."""
        sp = int(self.hparams.get("sequence_parallel", 1))
        if sp == 1 or getattr(self, "_sequence_split", False):
            return
        from anisora.inference.speedups.context_parallel import enable

        enable(self.backbone.denoiser, sp, mesh=sequence_parallel_mesh(sp, self.trainer.strategy.root_device))
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
    @contextlib.contextmanager
    def ema_weights(self):
        """Sample with the EMA denoiser inside the block (training weights are untouched)."""
        if self.ema is None:
            yield
            return
        trained = self.backbone.denoiser
        self.backbone.denoiser = self.ema
        try:
            yield
        finally:
            self.backbone.denoiser = trained

    def use_ema_weights(self) -> None:
        """Copy EMA weights into the backbone (for export and inference after loading)."""
        if self.ema is not None:
            self.backbone.denoiser.load_state_dict(self.ema.state_dict())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from anisora.methods.validation import validate_samples

        validate_samples(self, batch)


def sequence_parallel_mesh(degree: int, device: torch.device):
    """The (ring 1, ulysses `degree`) sub-mesh of this rank's group when there are several groups; None when
    the whole world is one group (diffusers builds that mesh itself)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if world == degree:
        return None
    mesh = init_device_mesh(device.type, (world // degree, 1, degree), mesh_dim_names=("dp", "ring", "ulysses"))
    return mesh["ring", "ulysses"]
