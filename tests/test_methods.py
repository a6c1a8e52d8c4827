"""The method group: methods come by `_target_`, unknown options fail in one line (a method with several roles
training, resuming and sampling is tests/test_distill.py's DMD)."""

from __future__ import annotations

import pytest
from conftest import compose

from anisora.config.errors import ConfigError


def test_an_unknown_method_option_or_class_fails_in_one_line():
    from anisora.tasks.train import method_class

    with pytest.raises(ConfigError, match=r"^method\.warp: SFTMethod has no such option$"):
        method_class(compose("train", ["+method.warp=1"]).method)
    with pytest.raises(ConfigError, match=r"^method\._target_: cannot import"):
        method_class(compose("train", ["method._target_=nowhere.Method"]).method)
    with pytest.raises(ConfigError, match=r"is not a DiffusionMethod"):
        method_class(compose("train", ["method._target_=torch.nn.Linear"]).method)


def test_bf16_true_precision_trains_the_bf16_weights_themselves(tmp_path):
    """`accelerator.precision=bf16-true` (DiffSynth-Studio's setting: no fp32 master copy, half the optimizer
    memory) is one override: every weight and Adam moment is bf16 and the step still moves the weights."""
    import torch
    from conftest import TINY, train_config

    from anisora.tasks.train import prepare_training

    cfg = train_config([*TINY, "accelerator=cpu", "accelerator.precision=bf16-true", "trainer.max_steps=2",
                        "logger=none", "callbacks.progress_bar=none", "callbacks.sample_videos=false",
                        "optimizer.ema_decay=0"], tmp_path)
    run = prepare_training(cfg, tmp_path / "run")
    before = {n: p.detach().float().clone() for n, p in run.method.backbone.denoiser.named_parameters()}
    run.trainer.fit(run.method, datamodule=run.datamodule)
    params = dict(run.method.backbone.denoiser.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    assert any(not torch.equal(p.float(), before[n]) for n, p in params.items())
    moments = [s["exp_avg"] for s in run.trainer.optimizers[0].state.values()]
    assert moments and all(m.dtype == torch.bfloat16 for m in moments)
