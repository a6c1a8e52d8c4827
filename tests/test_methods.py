"""The method group: a method other than SFT (a student and a critic with their own optimizers, as distillation
has them, plus the student's EMA) trains through train.py by `_target_`, resumes every role exactly after a kill,
and its checkpoint samples in infer.py; unknown method options fail in one line."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, TINY, assert_same_last_checkpoints, compose, killed_and_resumed, list_files, run_entry

from anisora.config.errors import ConfigError

STEPS = 16  # optimizer steps: two per batch (critic, then student)
METHOD = ["method._target_=two_role_method.TwoRoleMethod", "+method.critic_lr=3e-3", "model.lora.rank=4",
          "model.lora.alpha=8"]
RUN = [*TINY, *METHOD, f"trainer.max_steps={STEPS}", "callbacks.checkpoint_every_n_steps=4",
       "trainer.val_every_n_steps=1000", "trainer.log_every_n_steps=2", "optimizer.warmup_steps=2",
       "optimizer.ema_decay=0.9", "logger=none", "callbacks.sample_videos=false"]


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))


def test_a_two_role_method_resumes_every_role_exactly_and_samples_in_infer(tmp_path):
    runs = killed_and_resumed(tmp_path, RUN, STEPS)
    weights = assert_same_last_checkpoints(runs["full"], runs["resumed"], STEPS)
    for adapter in ("default", "critic", "ema"):  # student, critic and EMA adapters over one base
        keys = [k for k in weights if f"lora_B.{adapter}." in k]
        assert keys and all(weights[k].abs().sum() > 0 for k in keys), adapter
    last = runs["full"] / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["method_class"] == "two_role_method.TwoRoleMethod"
    assert len(state["optimizer_states"]) == 2
    student_lr, critic_lr = (opt["param_groups"][0]["lr"] for opt in state["optimizer_states"])
    assert student_lr != critic_lr

    out = run_entry("infer.py", "accelerator=cpu", "num_clips=1", "sampler.num_steps=2",
                    f"ckpt={last}",
                    log_dir=tmp_path / "infer")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.suffix for p in list_files(tmp_path / "infer") if p.parent.name == "videos"] == [".mp4"]


def test_an_unknown_method_option_or_class_fails_in_one_line():
    from anisora.tasks.train import method_class

    with pytest.raises(ConfigError, match=r"^method\.warp: SFTMethod has no such option$"):
        method_class(compose("train", ["+method.warp=1"]).method)
    with pytest.raises(ConfigError, match=r"^method\._target_: cannot import"):
        method_class(compose("train", ["method._target_=nowhere.Method"]).method)
    with pytest.raises(ConfigError, match=r"is not a DiffusionMethod"):
        method_class(compose("train", ["method._target_=torch.nn.Linear"]).method)
