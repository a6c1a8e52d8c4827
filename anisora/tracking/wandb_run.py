"""One W&B project for every task: runs grouped by preset, typed by task and method, offline until synced."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("anisora.tracking")
NO_PRESET = "adhoc"


def hydra_choice(group: str) -> str | None:
    """The option Hydra picked for `group` in this run (None outside a Hydra run or when none was picked)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except (ValueError, AttributeError):
        return None


def run_identity(cfg: DictConfig) -> dict[str, str]:
    """W&B `group` (the experiment preset, so a recipe's train, distill, RL and evaluate runs sit together) and
    `job_type` (the task, with the method or RL algorithm that ran: train/sft, train/distill_dmd, rl_finetune/gapo)."""
    group = hydra_choice("experiment") or NO_PRESET
    method = hydra_choice("rl") if cfg.task_name == "rl_finetune" else hydra_choice("method")
    job_type = f"{cfg.task_name}/{method}" if method else str(cfg.task_name)
    return {"group": group, "job_type": job_type}


def offline_run_folder() -> Path | None:
    """The folder of the active offline W&B run (what `wandb sync` uploads), if there is one."""
    import sys

    if "wandb" not in sys.modules:
        return None
    import wandb

    run = wandb.run
    if run is None or not run.settings._offline:
        return None
    return Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> the run folder


def sync_command(folder: Path) -> str:
    return f"wandb sync {folder}"


def print_sync_command() -> None:
    """Offline runs end with the one command that uploads them once a network is there."""
    folder = offline_run_folder()
    if folder is not None:
        print(f"W&B run saved offline; upload it with: {sync_command(folder)}")


def video_table(rows: list[dict[str, Any]], video_key: str = "video") -> Any:
    """A wandb.Table of dict rows (same keys in each); the `video_key` column holds mp4 paths, logged as videos."""
    import wandb

    columns = list(rows[0])
    data = [[wandb.Video(str(r[c]), format="mp4") if c == video_key and r[c] else r[c] for c in columns]
            for r in rows]
    return wandb.Table(columns=columns, data=data)
