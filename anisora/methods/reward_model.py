"""method=reward_model: a learned video reward model (AnimeReward's dimensions, VideoReward's losses).

Not a DiffusionMethod: that base exists for methods that train denoiser roles over a diffusion backbone (latents,
(G, M) guide draws, objectives, EMA roles, sampling for validation). A reward model has none of these: it reads
decoded pixels, prompts and guide images through vision and text towers, and its validation is ranking, not
sampling. So it is a small LightningModule that shares the rest of the house: train.py's trainer, loggers,
callbacks, atomic checkpoints and run record, the `optimizer` group, and the `reward` group, where its
checkpoint is the `learned` scorer (anisora.rewards.learned) for evaluate.py and rl_finetune.py.

Loss = regression_weight * MSE on standardised scores (censored at the ends of the training scores' range, where
the output is clamped) + pair_weight * (Bradley-Terry | with ties) on pairs.
Validation logs, per dimension, Spearman's rho of the predictions against the held-out scores and the accuracy
on held-out non-tied pairs (val/spearman/<dim>, val/pair_accuracy/<dim>, and their minimum and mean), both on the
scores the `learned` scorer returns (clamped), as benchmarks/reward_data.py grades them.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from anisora.methods.base import constant, warmup_cosine
from anisora.methods.reward_losses import pair_accuracy, pair_loss, regression_loss, spearman
from anisora.rewards.reward_net import RewardNet
from anisora.rewards.towers import Towers


class RewardModelMethod(pl.LightningModule):
    """Heads over towers, trained on groups of scored clips and their pairs (anisora.data.reward_clips)."""

    def __init__(self, settings: dict[str, Any], optimizer: dict[str, Any], max_steps: int,
                 tower_configs: dict[str, Any] | None = None, score_mean: list[float] | None = None,
                 score_std: list[float] | None = None, tokenizer_files: dict[str, bytes] | None = None,
                 score_min: list[float] | None = None, score_max: list[float] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_files"])  # they travel beside the weights (on_save_checkpoint)
        towers = Towers(settings.get("vision"), settings.get("text"), tower_configs, tokenizer_files)
        self.hparams["tower_configs"] = towers.configs()  # the checkpoint rebuilds the towers without the folders
        towers.vision.requires_grad_(bool(settings["train_vision"]))
        if towers.text is not None:
            towers.text.requires_grad_(bool(settings["train_text"]))
        self.net = RewardNet(towers, settings["dimensions"], settings["num_frames"], settings["hidden"], score_mean,
                             score_std, score_min, score_max, settings.get("pixel_motion", False))
        self._held_out: list[dict[str, Any]] = []

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.net.dimensions

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["method_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["tokenizer_files"] = self.net.towers.tokenizer_files()

    @classmethod
    def load(cls, path: str, map_location: str | torch.device = "cpu") -> RewardModelMethod:
        """A trained reward model from its checkpoint alone (towers from their recorded configs, the tokenizer
        from the files saved beside the weights)."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        model = cls(**checkpoint["hyper_parameters"], tokenizer_files=checkpoint.get("tokenizer_files") or None)
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()

    # ----------------------------------------------------------------- training
    def rewards(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.net(batch["pixels"], batch["prompts"], batch["guide"], batch["has_guide"])

    def losses(self, batch: dict[str, Any], rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        settings = self.hparams.settings
        pairs, ties = batch["pairs"], batch["ties"]
        delta = rewards[pairs[:, 0], pairs[:, 2]] - rewards[pairs[:, 1], pairs[:, 2]]
        out = {"regression": regression_loss(rewards, batch["scores"].to(rewards), *self.net.standardised_range())}
        out["pairs"] = pair_loss(delta, ties, settings["pair_loss"], settings["tie_k"]) \
            if settings["pair_loss"] != "none" else rewards.sum() * 0.0
        out["loss"] = settings["regression_weight"] * out["regression"] + settings["pair_weight"] * out["pairs"]
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch, self.rewards(batch))
        size = len(batch["prompts"])
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=size)
        self.log("train/regression", terms["regression"], batch_size=size)
        self.log("train/pairs", terms["pairs"], batch_size=size)
        return terms["loss"]

    def configure_optimizers(self):
        cfg = self.hparams.optimizer
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"],
                                eps=cfg["eps"])
        factor = constant if cfg.get("schedule") == "constant" else warmup_cosine(int(cfg["warmup_steps"]),
                                                                                   int(self.hparams.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._held_out = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rewards = self.rewards(batch)
        scores = self.net.scores(rewards)  # what the scorer returns: a predicted tie at the range's end counts half
        pairs = batch["pairs"]
        delta = scores[pairs[:, 0], pairs[:, 2]] - scores[pairs[:, 1], pairs[:, 2]]
        self._held_out.append({"pred": scores.float().cpu().numpy(),
                               "scores": batch["raw_scores"].cpu().numpy(), "delta": delta.float().cpu().numpy(),
                               "dims": pairs[:, 2].cpu().numpy(), "ties": batch["ties"].cpu().numpy(),
                               "labels": batch["labels"]})
        self.log("val/loss", self.losses(batch, rewards)["loss"], batch_size=len(batch["prompts"]))

    def on_validation_epoch_end(self) -> None:
        if not self._held_out:
            return
        for key, value in held_out_metrics(self._held_out, self.dimensions).items():
            if math.isfinite(value):
                self.log(f"val/{key}", value)


def held_out_metrics(parts: list[dict[str, Any]], dimensions: tuple[str, ...]) -> dict[str, float]:
    """spearman/<dim>, pair_accuracy/<dim> and their min and mean over dimensions, from validation batches."""
    pred = np.concatenate([p["pred"] for p in parts])
    scores = np.concatenate([p["scores"] for p in parts])
    delta = np.concatenate([p["delta"] for p in parts])
    dims = np.concatenate([p["dims"] for p in parts])
    ties = np.concatenate([p["ties"] for p in parts])
    out: dict[str, float] = {}
    for d, name in enumerate(dimensions):
        out[f"spearman/{name}"] = spearman(pred[:, d], scores[:, d])
        out[f"pair_accuracy/{name}"] = pair_accuracy(delta[dims == d], ties[dims == d])
    for metric in ("spearman", "pair_accuracy"):
        values = [out[f"{metric}/{n}"] for n in dimensions if math.isfinite(out[f"{metric}/{n}"])]
        if values:
            out[f"{metric}_min"], out[f"{metric}_mean"] = float(min(values)), float(np.mean(values))
    return out


def is_reward_model(method_cfg: Any) -> bool:
    """Whether `method._target_` names the reward model (or a subclass of it)."""
    from hydra.utils import get_class

    try:
        cls = get_class(method_cfg.get("_target_"))
    except Exception:
        return False
    return isinstance(cls, type) and issubclass(cls, RewardModelMethod)
