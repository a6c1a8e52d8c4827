"""`ckpt=latest` / `ckpt_path=last` pick the newest checkpoint of the kind the entry point needs: train.py writes
diffusion models and reward models under the same train/ folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anisora.config.errors import ConfigError
from anisora.tasks.common import RECORD_CONFIG, find_checkpoint

TARGETS = {"sft": "anisora.methods.sft.SFTMethod", "reward": "anisora.methods.reward_model.RewardModelMethod"}


def run_folder(log_dir: Path, name: str, method: str | None, age_s: int) -> Path:
    run = log_dir / "train" / name
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (1_000_000 - age_s, 1_000_000 - age_s))
    if method is not None:
        OmegaConf.save(OmegaConf.create({"method": {"_target_": TARGETS[method]}}), run / RECORD_CONFIG)
    return ckpt


def test_latest_skips_a_newer_reward_model_for_a_diffusion_run_and_the_other_way(tmp_path):
    sft = run_folder(tmp_path, "sft", "sft", age_s=100)
    reward = run_folder(tmp_path, "reward", "reward", age_s=10)
    assert find_checkpoint("latest", tmp_path, "ckpt") == sft
    assert find_checkpoint("last", tmp_path, "ckpt_path", reward_model=True) == reward
    unrecorded = run_folder(tmp_path, "old", None, age_s=1)  # no config record: taken as either kind
    assert find_checkpoint("latest", tmp_path, "ckpt") == unrecorded


def test_latest_with_only_reward_models_names_what_it_skipped(tmp_path):
    run_folder(tmp_path, "reward", "reward", age_s=10)
    with pytest.raises(ConfigError) as err:
        find_checkpoint("latest", tmp_path, "ckpt")
    assert str(err.value) == (f"ckpt: latest: no checkpoints/last.ckpt of a diffusion model under {tmp_path / 'train'} "
                              "(1 reward-model runs skipped); run train.py first or give a path")
