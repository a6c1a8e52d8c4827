"""Hydra sweeps that survive a bad trial: the objective from `optimized_metric`, failures turned into failed trials
(the Optuna sweeper records them and goes on), and the study as pictures beside the sweep folder."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("anisora.sweeps")


class TrialFailed(RuntimeError):
    """A sweep trial that stopped on bad input, ran out of memory or diverged; the sweeper marks it failed."""


def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def objective(metrics: dict[str, float], name: str) -> float:
    """`metrics[name]`, finite; a missing or non-finite value fails the trial in one line."""
    if name not in metrics:
        raise TrialFailed(f"optimized_metric {name!r} was not logged; logged: {', '.join(sorted(metrics))}")
    value = float(metrics[name])
    if not math.isfinite(value):
        raise TrialFailed(f"{name} is {value} (diverged)")
    return value


def run_trial(body: Callable[[], dict[str, float]], name: str) -> float:
    """The task's objective. In a multirun, a refusal (exit 2), an out-of-memory error or a NaN becomes
    `TrialFailed`, an Exception Hydra's job runner records, so the sweep goes on; outside one, errors pass."""
    if not in_multirun():
        metrics = body()
        return float(metrics.get(name, math.nan))
    try:
        return objective(body(), name)
    except SystemExit as ex:
        if not ex.code:
            raise
        raise TrialFailed(f"the trial stopped with exit code {ex.code}") from None
    except TrialFailed:
        raise
    except Exception as ex:  # out of memory, a failure inside the loop: this trial only
        raise TrialFailed(f"{type(ex).__name__}: {(str(ex).splitlines() or [''])[0]}") from ex


def study_plots(study: Any, folder: Path) -> list[Path]:
    """objective.png (the value of each trial, failed ones marked) and, with enough complete trials,
    importance.png (Optuna's fANOVA parameter importance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    trials = study.trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([t.number for t in done], [t.value for t in done], "o-", label="complete")
    for t in failed:
        ax.axvline(t.number, color="tab:red", alpha=0.4, label="failed" if t is failed[0] else None)
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written = [folder / "objective.png"]
    fig.savefig(written[0], dpi=100)
    plt.close(fig)
    if len(done) >= 2 and done[0].params:
        try:
            importance = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as ex:  # e.g. every complete trial has the same value
            log.info("no parameter importance: %s", ex)
            return written
        fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(importance)))
        ax.barh(list(importance), list(importance.values()))
        ax.set_xlabel("importance (fANOVA)")
        fig.tight_layout()
        written.append(folder / "importance.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


class SweepPlots(Callback):
    """Hydra callback for Optuna multiruns: makes the SQLite study's folder before the sweeper opens it, and when the
    sweep ends writes the study's plots beside the sweep folder."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = str(config.hydra.sweeper.get("storage") or "")
        if storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if not sweeper.get("storage"):
            return
        import optuna

        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        for path in study_plots(study, Path(config.hydra.sweep.dir)):
            log.info("sweep plot: %s", path)
