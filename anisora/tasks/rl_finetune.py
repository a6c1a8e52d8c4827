"""rl_finetune.py: preference and reward fine-tuning of a trained checkpoint (GAPO, DPO, RWR, GRPO).

The starting checkpoint (the newest train.py wrote, or `ckpt=`) brings the model, its data world, guide policy
and sampler; the policy is a LoRA adapter over its weights (the reference: adapters off). Online, each round
samples, scores and updates (anisora.methods.preference); offline (`pairs=FILE`) the rounds read scored pairs.
The run writes Lightning checkpoints that resume exactly (`ckpt_path=last`), the policy's export, the held-out
scores of every evaluation (`heldout.json`) and each round's gathered score table and statistics (`rounds.jsonl`).
Under data parallelism every rank reads the round's prompts and rolls out its own share of them (a multiple of the
world size); global rank 0 alone writes the run's records, plots and export.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from anisora.accelerators.devices import set_num_threads
from anisora.config.errors import ConfigError
from anisora.data.datamodule import SyntheticDataModule
from anisora.data.pairs import PairsDataModule, check_pair_size, read_pairs
from anisora.inference.loading import read_hparams
from anisora.io import atomic_write_text
from anisora.methods.preference.offline import OfflinePairs
from anisora.methods.preference.rounds import PreferenceMethod, check_optimised, round_share
from anisora.tasks.common import environment_defaults, find_checkpoint, run_task, write_run_record
from anisora.tasks.train import build_method, check_training, target_class, world_of
from anisora.tasks.trainer import build_trainer
from anisora.tracking.rl_report import log_rl_summary

log = logging.getLogger("anisora.rl")
GROUPS = ["rl", "reward", "optimizer", "accelerator", "strategy", "trainer", "callbacks", "logger", "paths"]
#: what the starting (or resumed) checkpoint decides for the run
FROM_CHECKPOINT = ("model", "data", "guide", "sampler")


def preference_class(cfg: DictConfig) -> type[PreferenceMethod]:
    return target_class(cfg.rl.get("_target_"), "rl._target_", PreferenceMethod)


def training_config(cfg: DictConfig, source: Path, start: str | None) -> DictConfig:
    """The config train.py's builders take: the model, data, guide and sampler of `source` (the starting
    checkpoint, or the resumed run's), this run's groups, the rl settings and the policy's LoRA as the method's
    options, the starting weights (`start`: None when resuming) and step counts in optimizer steps."""
    saved = read_hparams(source)
    run = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    rl = dict(run["rl"])
    target = rl.pop("_target_")
    steps = rl["updates_per_round"]
    run |= {k: saved[k] for k in FROM_CHECKPOINT}
    run["data"] = {**run["data"], "batch_size": rl["prompts_per_round"]}
    run["method"] = {"_target_": target, "rl": rl, "reward": run["reward"],
                     "role_lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha}, "init_from": start}
    run["trainer"]["max_steps"] = rl["rounds"] * steps
    run["callbacks"]["checkpoint_every_n_steps"] = rl["checkpoint_every"] * steps
    checkpoint = (run["callbacks"].get("instances") or {}).get("checkpoint")
    if checkpoint:
        checkpoint["every_n_train_steps"] = rl["checkpoint_every"] * steps
    return OmegaConf.create(run)


def check_reward(cfg: DictConfig) -> None:
    """A reward is configured, its scorer builds, and the optimised dimension is one it maximises."""
    from anisora.rewards import build_scorer

    if cfg.reward is None:
        raise ConfigError("reward", "rl_finetune optimises a reward: choose one, e.g. reward=weighted")
    check_optimised(build_scorer(cfg.reward), cfg.rl.optimise)


class RoundPrompts(SyntheticDataModule):
    """The round's prompts, the same on every rank: each rank rolls out its own share of them
    (PreferenceMethod.local_prompts), so a round is the same prompts whatever the world size, and the data
    position (rounds x prompts per round) resumes on any number of ranks."""

    def data_rank(self) -> tuple[int, int]:
        return 0, 1


def build_data(cfg: DictConfig, train_cfg: DictConfig, method_cls: type) -> SyntheticDataModule:
    """Prompts of the checkpoint's world with their ground truth (online), or the pairs file (offline)."""
    world, data = world_of(train_cfg.data), train_cfg.data
    if cfg.pairs is None:
        return RoundPrompts(world, data.seed, data.batch_size, truth=True)
    if not issubclass(method_cls, OfflinePairs):
        raise ConfigError("pairs", f"{method_cls.__name__} learns from its own rollouts; a pairs file trains "
                                   "rl=gapo, rl=dpo or rl=rwr")
    entries = read_pairs(cfg.pairs)
    check_pair_size(entries[0], world)
    return PairsDataModule(entries, world, data.seed, data.batch_size)


def check_policy(method: PreferenceMethod) -> None:
    if not method.roles.parameters_of("policy"):
        raise ConfigError("lora_rank", "the policy has no trainable parameters (no LoRA targets matched and no full "
                                       "fine-tuning): set lora_rank > 0 with matching model.lora.targets")


def export(method: PreferenceMethod, folder: Path) -> None:
    """The policy for people (LoRA safetensors over the base, or a pipeline folder), where the family has a stock
    diffusers pipeline; the Lightning checkpoint serves infer.py and evaluate.py either way."""
    try:
        method.roles.export(method.sample_role, folder, overwrite=True)
        log.info("export: %s", folder)
    except ConfigError as ex:
        log.info("no export (%s); infer.py and evaluate.py read checkpoints/last.ckpt", ex)


def write_outputs(trainer: pl.Trainer, method: PreferenceMethod, run_dir: Path) -> None:
    """What people read (global rank 0 alone): the export, held-out history, round table, reward curves and the
    first -> last held-out summary."""
    export(method, run_dir / "export")
    atomic_write_text(run_dir / "heldout.json", json.dumps(method.history, indent=1) + "\n")
    atomic_write_text(run_dir / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in method.round_records))
    log_rl_summary(trainer, method, run_dir)  # reward_curves.png; on W&B the held-out table and videos
    first, last = method.history[0], method.history[-1]
    width = max(len(k) for k in last)
    print("\n".join(f"{k:<{width}}  {first[k]:.4f} -> {v:.4f}" for k, v in last.items() if k != "round"))


def rl_finetune(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    log_dir = Path(cfg.paths.log_dir)
    method_cls = preference_class(cfg)
    check_reward(cfg)
    resume = find_checkpoint(cfg.ckpt_path, log_dir, "ckpt_path", task=cfg.task_name)
    start = None if resume else find_checkpoint(cfg.ckpt, log_dir, "ckpt")
    train_cfg = training_config(cfg, resume or start, None if start is None else str(start))
    datamodule = build_data(cfg, train_cfg, method_cls)
    strategy, sequence_parallel, frozen = check_training(train_cfg)
    environment_defaults()
    set_num_threads(cfg.accelerator.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    method = build_method(train_cfg, sequence_parallel, frozen)
    check_policy(method)
    if rank_zero_only.rank == 0:  # DDP ranks > 0 run this script again in the same folder
        write_run_record(cfg, run_dir)
    trainable = sum(p.numel() for p in method.roles.parameters_of("policy"))
    log.info("%s from %s; policy parameters: %s; %s; run folder: %s", method_cls.__name__, resume or start,
             f"{trainable:,}", f"pairs {cfg.pairs}" if cfg.pairs else "online rollouts", run_dir)
    trainer = build_trainer(train_cfg, run_dir, method, strategy)
    round_share(train_cfg.data.batch_size, 0, max(1, trainer.world_size // sequence_parallel))  # splits evenly
    trainer.fit(method, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    if method.stop_reason is None and (not method.history or method.history[-1]["round"] != method.rounds_done):
        method.evaluate_and_guard(log_metrics=False)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # every rank takes part; rank 0 writes
    if trainer.is_global_zero:
        write_outputs(trainer, method, run_dir)
    last = method.history[-1]
    if method.stop_reason:
        print(f"stopped: {method.stop_reason}", file=sys.stderr)
        raise SystemExit(3)
    return {k: float(v) for k, v in last.items()}


def run(cfg: DictConfig) -> dict[str, float]:
    return run_task(cfg, GROUPS, rl_finetune)
