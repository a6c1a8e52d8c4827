"""Every experiment preset composes with its real model and runs a few steps with its tiny counterpart; the
offline W&B runs of train, evaluate and rl_finetune hold their metrics, tables and videos."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from conftest import ROOT, TINY, compose, task_config

TINY_COGVIDEOX = ["model.num_layers=1", "model.num_attention_heads=2", "model.attention_head_dim=16",
                  "model.time_embed_dim=16", "model.text_dim=16", "model.text_layers=1", "model.text_heads=2",
                  "model.text_ff=32", *[o for o in TINY if not o.startswith("model.")]]
FEW = ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.log_every_n_steps=1",
       "callbacks.checkpoint_every_n_steps=2"]
RL = ["accelerator=cpu", "callbacks.progress_bar=none", "rl.rounds=1", "rl.checkpoint_every=1", "rl.eval_every=1",
      "rl.eval_prompts=2", "rl.rollout_steps=2", "rl.prompts_per_round=2", "rl.rollouts_per_prompt=2",
      "rl.updates_per_round=1", "lora_rank=4", "lora_alpha=8"]
# preset -> (primary config, real model kind or None when the model comes from the checkpoint)
PRESETS = {"anisora_v1": ("train", "cogvideox"), "anisora_v2": ("train", "wan"),
           "anisora_v2_distill": ("train", "wan"), "anisora_v3_anyframe": ("train", "wan"),
           "anisora_rl_gapo": ("rl_finetune", None)}


def run_config(name: str, overrides: list[str], folder: Path):
    """A task's config writing its run under `folder` (its parent the log dir, as Hydra lays runs out)."""
    return task_config(name, [*overrides, f"paths.log_dir={folder.parent}", f"paths.output_dir={folder}"])


def test_every_preset_composes_with_its_real_model_and_has_a_tiny_counterpart(tmp_path):
    presets = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    for preset, (primary, kind) in PRESETS.items():
        assert f"{preset}_tiny" in presets, preset
        cfg = compose(primary, [f"experiment={preset}"])
        tiny = compose(primary, [f"experiment={preset}_tiny"])
        if kind is not None:
            assert cfg.model.kind == kind and tiny.model.kind.startswith("tiny"), preset
            assert cfg.optimizer.betas == tiny.optimizer.betas and cfg.method._target_ == tiny.method._target_
        assert cfg.hydra.runtime.choices.experiment == preset
    v1, v2 = compose("train", ["experiment=anisora_v1"]), compose("train", ["experiment=anisora_v2"])
    assert (v1.optimizer.lr, v1.trainer.gradient_clip_val, v1.strategy.name) == (2e-5, 0.1, "deepspeed")
    assert (v2.optimizer.lr, v2.model.objective.shift, v2.strategy.name, v2.guide.p_drop_text) == (1e-5, 5.0, "fsdp", 0)
    assert compose("rl_finetune", ["experiment=anisora_rl_gapo"]).rl.beta == 5000.0
    for primary in ("train", "infer", "evaluate", "rl_finetune", "encode", "curate"):  # `experiment=` composes
        text = (ROOT / "conf" / f"{primary}.yaml").read_text()
        assert re.search(r"^  - experiment: null$", text, re.M), primary


def offline_run(folder: Path) -> Path:
    runs = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list(folder.rglob("*.wandb"))
    return runs[0]


def wandb_records(path: Path) -> tuple[set[str], dict]:
    """Keys of every logged history row (media and tables by their `<key>/_type`) and the run's identity (group,
    job_type), read from the offline run file: 32 KiB blocks of chunked protobuf records after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    keys: set[str] = set()
    identity: dict = {}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # 1: a whole record, 4: its last chunk
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif record.WhichOneof("record_type") == "run":
            identity = {"group": record.run.run_group, "job_type": record.run.job_type}
    return keys, identity


def media(folder: Path, suffix: str) -> list[Path]:
    return sorted(folder.glob(f"wandb/offline-run-*/files/media/**/*{suffix}"))


def test_every_tiny_preset_runs_and_the_offline_wandb_runs_hold_metrics_tables_and_videos(tmp_path, capsys):
    from anisora.tasks import evaluate, rl_finetune, train
    from anisora.tasks.common import run_task

    def fit(cfg) -> dict[str, float]:
        return run_task(cfg, train.GROUPS, train.train)

    runs = {}
    for preset, extra in [("anisora_v2_tiny", ["logger=wandb"]), ("anisora_v1_tiny", ["logger=none"]),
                          ("anisora_v3_anyframe_tiny", ["logger=none"])]:
        tiny = TINY_COGVIDEOX if preset.startswith("anisora_v1") else TINY
        runs[preset] = tmp_path / "train" / preset
        metrics = fit(run_config("train", [f"experiment={preset}", *tiny, *FEW, *extra], runs[preset]))
        assert metrics["global_step"] == 2 and metrics["train/loss"] == metrics["train/loss"], preset  # not NaN
    teacher = runs["anisora_v2_tiny"] / "checkpoints" / "last.ckpt"
    distill = tmp_path / "train" / "anisora_v2_distill_tiny"
    metrics = fit(run_config("train", ["experiment=anisora_v2_distill_tiny", *TINY, *FEW, "logger=none",
                                       f"method.teacher={teacher}", "method.role_lora.rank=4",
                                       "method.role_lora.alpha=4", "callbacks.sample_videos=false",
                                       "sampler.num_steps=4"], distill))
    assert metrics["global_step"] == 2 and "train/critic_loss" in metrics
    rl = tmp_path / "rl_finetune" / "gapo"
    rl_metrics = rl_finetune.run(run_config("rl_finetune", ["experiment=anisora_rl_gapo_tiny", f"ckpt={teacher}",
                                                            *RL, "logger=wandb"], rl))
    assert set(rl_metrics) >= {"reward", "guide_psnr"} and (rl / "reward_curves.png").stat().st_size > 1000
    ev = tmp_path / "evaluate" / "run"
    ev_metrics = evaluate.run(run_config("evaluate", [f"ckpt={teacher}", "accelerator=cpu", "num_clips=2",
                                                      "sampler.num_steps=2"], ev))
    assert ev_metrics["num_clips"] == 2
    printed = capsys.readouterr().out
    for folder, task in [(runs["anisora_v2_tiny"], "train/sft"), (rl, "rl_finetune/gapo"), (ev, "evaluate")]:
        keys, identity = wandb_records(offline_run(folder))
        assert identity["job_type"] == task, identity
        assert f"wandb sync {offline_run(folder).parent}" in printed, task
        assert media(folder, ".mp4"), f"no video in the {task} run"
        assert media(folder, ".table.json"), f"no table in the {task} run"
    train_keys, identity = wandb_records(offline_run(runs["anisora_v2_tiny"]))
    logged = {k.split("/_type")[0] for k in train_keys}
    assert identity["group"] == "anisora_v2_tiny"
    assert {"train/loss", "lr/student", "grad_norm/student", "perf/samples_per_s", "perf/tokens_per_s",
            "val/direction_accuracy", "val/samples", "val/sample_table"} <= logged, sorted(train_keys)
    rl_keys, _ = wandb_records(offline_run(rl))
    assert {"rollout/reward", "heldout/reward", "rl/loss", "heldout/rounds/_type", "heldout/samples/_type",
            "heldout/reward_curves/_type"} <= rl_keys
    ev_keys, _ = wandb_records(offline_run(ev))
    assert {"eval/direction_accuracy", "eval/clips/_type", "eval/videos/_type"} <= ev_keys
    table = json.loads(media(ev, ".table.json")[0].read_text())
    assert len(table["data"]) == 2 and {"video", "speed_error", "temporal_flickering"} <= set(table["columns"])


@pytest.mark.slow
def test_a_three_trial_optuna_sweep_records_a_diverged_trial_as_failed_and_writes_best_params_and_plots(tmp_path):
    """The study is created in the sweep's SQLite file first, with its three trials queued (the second diverges at
    lr 1e30); the sweep loads it, as a resumed sweep would, runs them and goes on past the failure."""
    optuna = pytest.importorskip("optuna", reason="the sweeps extra: pip install -e '.[sweeps]'")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install --no-deps hydra-optuna-sweeper")
    import yaml
    from conftest import list_files, run_entry

    db = tmp_path / "queued" / "study.db"  # the sweep finds its folder made, and the study queued
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="train_tiny_lr_motion", storage=f"sqlite:///{db}", direction="minimize")
    for lr in (1e-3, 1e30, 3e-3):
        study.enqueue_trial({"optimizer.lr": lr, "model.objective.motion_weight": 4.0})
    out = run_entry("train.py", "-m", "hparams_search=optuna", *TINY, "trainer.max_steps=3",
                    "trainer.val_every_n_steps=100", "callbacks.checkpoint_every_n_steps=100",
                    "hydra.sweeper.params={optimizer.lr:'tag(log, interval(1e-4, 1e30))'}", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.study_name=train_tiny_lr_motion", f"hydra.sweeper.storage=sqlite:///{db}",
                    log_dir=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = optuna.load_study(study_name="train_tiny_lr_motion", storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value)
    sweep = next((tmp_path / "train" / "multirun").iterdir())
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["optimizer.lr"] == best.params["optimizer.lr"] and results["best_value"] == best.value
    assert {p.name for p in list_files(sweep) if p.suffix == ".png"} == {"objective.png", "importance.png"}
