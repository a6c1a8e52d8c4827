"""What every task does around its work: validate first, then record the run, then clean up."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anisora.config.errors import ConfigError
from anisora.config.validate import check_config
from anisora.io import atomic_write_text
from anisora.tracking.wandb_run import print_sync_command

log = logging.getLogger("anisora")
PACKAGES = ("anisora", "torch", "lightning", "diffusers", "transformers", "peft", "hydra-core", "omegaconf",
            "wandb", "webdataset", "av", "numpy")
RECORD_CONFIG, RECORD_RUN = "config.yaml", "run.json"


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def git_revision(root: Path) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_log_file(cfg: DictConfig, run_dir: Path) -> Path:
    return run_dir / f"{cfg.task_name}.log"


def record_files(cfg: DictConfig, run_dir: Path) -> set[Path]:
    """What `write_run_record` puts in the run folder."""
    return {run_dir / RECORD_CONFIG, run_dir / RECORD_RUN, run_log_file(cfg, run_dir)}


def write_run_record(cfg: DictConfig, run_dir: Path) -> None:
    """Resolved config, overrides, git revision and versions beside the run's outputs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RECORD_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        pass
    record = {"command": sys.argv, "overrides": overrides, "git_revision": git_revision(Path(__file__).parent),
              "versions": package_versions(), "host": platform.node()}
    atomic_write_text(run_dir / RECORD_RUN, json.dumps(record, indent=2) + "\n")
    handler = logging.FileHandler(run_log_file(cfg, run_dir))
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    route_library_logs()


def route_library_logs() -> None:
    """Lightning installs its own console handler; send its records through the run's handlers instead
    (one copy on the console, and into the run's log file)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def close_run_log(log_file: Path) -> None:
    """Detach the run's log file from the root logger: the next job of a multirun (same process) must not
    write into it, and a refused run's file can then be removed."""
    root, target = logging.getLogger(), str(log_file.resolve())
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
            root.removeHandler(handler)
            handler.close()


def discard_run_record(cfg: DictConfig, run_dir: Path) -> None:
    """A run refused after it recorded itself but before it wrote anything else leaves no record behind."""
    record = record_files(cfg, run_dir)
    if not run_dir.is_dir() or any(path not in record for path in run_dir.iterdir()):
        return
    close_run_log(run_log_file(cfg, run_dir))
    for path in record:
        path.unlink(missing_ok=True)


def remove_if_empty(folder: Path, top: Path) -> None:
    """Undo the empty run folders Hydra created (up to and including `top`, the log folder) when a run
    stops on bad input before writing anything."""
    top, path = top.resolve(), folder.resolve()
    chain = [path, *[p for p in path.parents if top == p or top in p.parents]] if top in path.parents else [path]
    for directory in chain:
        try:
            directory.rmdir()
        except OSError:
            return


def run_task(cfg: DictConfig, groups: list[str], body: Callable[[DictConfig, Path], Any]) -> Any:
    """Validate, record, run. Bad input: one line on stderr, exit code 2, no output left behind.

    Exiting here (SystemExit passes through Hydra's job runner untouched) keeps Hydra from adding
    its own report lines; W&B is closed in every case.
    """
    run_dir = run_dir_of(cfg)
    try:
        check_config(cfg, groups)
        return body(cfg, run_dir)
    except ConfigError as ex:
        discard_run_record(cfg, run_dir)
        remove_if_empty(run_dir, Path(cfg.paths.log_dir))
        print(f"error: {ex}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        close_run_log(run_log_file(cfg, run_dir))
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                print_sync_command()
                wandb.finish()


def newest(paths: list[Path]) -> Path | None:
    paths = [p for p in paths if p.exists()]  # a folder: a sharded checkpoint (FSDP sharded, DeepSpeed)
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def trains_reward_model(run_dir: Path) -> bool | None:
    """Whether a run folder's config record names the reward model as its method; None without a record."""
    from anisora.methods.reward_model import is_reward_model

    record = run_dir / RECORD_CONFIG
    if not record.is_file():
        return None
    return is_reward_model(OmegaConf.load(record).get("method") or OmegaConf.create({}))


def find_checkpoint(spec: str | None, log_dir: Path, key: str, task: str = "train",
                    reward_model: bool = False) -> Path | None:
    """None -> None; 'last'/'latest' -> newest last.ckpt `task` (train.py) wrote of the kind asked for (a reward
    model's, or a diffusion model's: train.py writes both under train/, and a reward model is no starting point
    for infer.py or a diffusion run's resume); else an existing file (or the folder of a sharded checkpoint)."""
    if spec is None:
        return None
    if spec in ("last", "latest"):
        found = list((log_dir / task).glob("*/checkpoints/last.ckpt"))
        kept = [p for p in found if trains_reward_model(p.parent.parent) in (reward_model, None)]
        chosen = newest(kept)
        if chosen is None:
            kind, other = ("a reward model", "diffusion") if reward_model else ("a diffusion model", "reward-model")
            skipped = f" ({len(found) - len(kept)} {other} runs skipped)" if len(found) > len(kept) else ""
            raise ConfigError(key, f"{spec}: no checkpoints/last.ckpt of {kind} under {log_dir / task}{skipped}; "
                                   f"run {task}.py first or give a path")
        return chosen
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(key, f"checkpoint {path} does not exist")
    return path


def environment_defaults() -> None:
    """W&B offline unless the user says otherwise (HF_HUB_OFFLINE is set when anisora is imported)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
