"""rl_finetune.py end to end on a tiny checkpoint: a run killed mid-way resumes to the same weights, held-out
history and round tables as an uninterrupted one; offline GAPO from a pairs file writes a checkpoint that infer.py
and evaluate.py read; under DDP over two torchrun ranks each rank rolls out its own prompts, both gather the same
score table and rank 0 alone writes the records; bad input stops in one line before any rollout."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY, assert_same_last_checkpoints, compose, kill_when, list_files, run_entry
from omegaconf import OmegaConf
from test_many_nodes import two_nodes

ROUNDS = 4
RL = ["accelerator=cpu", "callbacks.progress_bar=none", f"rl.rounds={ROUNDS}", "rl.checkpoint_every=1",
      "rl.eval_every=2", "rl.eval_prompts=2", "rl.rollout_steps=2", "rl.prompts_per_round=2",
      "rl.rollouts_per_prompt=2", "rl.updates_per_round=2", "lora_rank=4", "lora_alpha=8"]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny SFT checkpoint as train.py writes it."""
    log_dir = tmp_path_factory.mktemp("sft")
    out = run_entry("train.py", *TINY, "trainer.max_steps=8", "logger=none", "callbacks.sample_videos=false",
                    log_dir=log_dir, run_dir=log_dir / "train" / "run")
    assert out.returncode == 0, out.stderr[-3000:]
    return log_dir / "train" / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_killed_run_resumes_exactly(tmp_path, start):
    args = [*RL, f"ckpt={start}"]
    full = run_entry("rl_finetune.py", *args, log_dir=tmp_path / "full", run_dir=tmp_path / "full" / "run")
    assert full.returncode == 0, full.stderr[-3000:]
    log_dir = tmp_path / "killed"
    first = log_dir / "rl_finetune" / "first"
    cmd = [sys.executable, str(ROOT / "rl_finetune.py"), f"paths.log_dir={log_dir}", f"hydra.run.dir={first}", *args]
    kill_when(cmd, lambda: (first / "checkpoints" / "step000004.ckpt").exists())  # after round 2 of 4
    done = sorted(p.name for p in (first / "checkpoints").glob("step*.ckpt"))
    assert done and done[-1] < f"step{2 * ROUNDS:06d}.ckpt", "the run was not interrupted"
    resumed = run_entry("rl_finetune.py", *args, "ckpt_path=last", log_dir=log_dir,
                        run_dir=log_dir / "rl_finetune" / "second")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    weights = assert_same_last_checkpoints(tmp_path / "full" / "run", log_dir / "rl_finetune" / "second",
                                           2 * ROUNDS)
    assert any("lora_B" in k and weights[k].abs().sum() > 0 for k in weights)  # the policy adapter trained
    history = json.loads((tmp_path / "full" / "run" / "heldout.json").read_text())
    assert [h["round"] for h in history] == [0, 2, 4]
    assert history == json.loads((log_dir / "rl_finetune" / "second" / "heldout.json").read_text())
    rounds = (tmp_path / "full" / "run" / "rounds.jsonl").read_text()
    assert [json.loads(line)["round"] for line in rounds.splitlines()] == list(range(1, ROUNDS + 1))
    assert rounds == (log_dir / "rl_finetune" / "second" / "rounds.jsonl").read_text()
    assert {"reward", "direction_correct", "speed_score", "guide_psnr", "temporal_flickering"} <= set(history[0])


def test_offline_gapo_from_a_pairs_file_then_infer_and_evaluate_read_it(tmp_path, start):
    from anisora.data.synthetic import WorldConfig, make_clip

    world = WorldConfig(num_frames=5, height=16, width=16, sprite_size=6)
    rows = []
    for i in range(2):
        clip = make_clip(world, 0, "train", i)
        np.save(tmp_path / f"w{i}.npy", clip.video)
        np.save(tmp_path / f"l{i}.npy", clip.video[::-1].copy())  # the sprite moves backwards
        rows.append({"video_path": f"w{i}.npy,l{i}.npy", "caption": clip.caption, "w_score": 90, "l_score": 20})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "rl" / "run"
    out = run_entry("rl_finetune.py", *RL, f"ckpt={start}", f"pairs={tmp_path / 'pairs.jsonl'}", "rl.rounds=1",
                    "rl.score_range=100", log_dir=tmp_path / "rl", run_dir=run)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    infer = run_entry("infer.py", "accelerator=cpu", "num_clips=1", "sampler.num_steps=2", f"ckpt={ckpt}",
                      log_dir=tmp_path / "infer")
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert len(list((tmp_path / "infer").rglob("*.mp4"))) == 1
    evaluate = run_entry("evaluate.py", "accelerator=cpu", "num_clips=2", "sampler.num_steps=2", "logger=none",
                         f"ckpt={ckpt}", log_dir=tmp_path / "evaluate", run_dir=tmp_path / "evaluate" / "run")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert json.loads((tmp_path / "evaluate" / "run" / "metrics.json").read_text())["num_clips"] == 2


@pytest.mark.slow
def test_a_round_over_two_ranks_rolls_out_each_prompt_once_and_rank_zero_alone_writes(tmp_path, start):
    """Two torchrun "nodes" of one process each (gloo): the round's 2 prompts split one per rank, both ranks gather
    the same score table (the digest each logs), the logged round metrics are the whole round's, and only global
    rank 0 writes records, plots, tables and checkpoints (each rank gets its own run folder to show it). The held-out
    prompts (3: blocks of 2 and 1) split over the ranks too, and the starting held-out means are one process's."""
    common = [*RL, "rl.rounds=1", "rl.eval_every=1", "rl.eval_prompts=3", "rl.updates_per_round=1", f"ckpt={start}"]
    args = [*common, "strategy=ddp", "accelerator.num_nodes=2", "accelerator.devices=1", f"paths.log_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}"]
    outputs = two_nodes(["rl_finetune.py", *args], 1)
    alone = run_entry("rl_finetune.py", *common, log_dir=tmp_path / "alone", run_dir=tmp_path / "alone" / "run")
    assert alone.returncode == 0, alone.stderr[-3000:]
    first_alone = json.loads((tmp_path / "alone" / "run" / "heldout.json").read_text())[0]
    first_split = json.loads((tmp_path / "rank0" / "heldout.json").read_text())[0]
    assert first_split.keys() == first_alone.keys()
    for key, value in first_alone.items():
        assert first_split[key] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), key
    seen = [re.findall(r"round 1, rank (\d) of 2: prompts \[(\d)\]; the round's table: 4 samples of 2 prompts, "
                       r"digest (\w+)", out) for out in outputs]
    assert [len(found) for found in seen] == [1, 1], outputs[0][-3000:]
    (rank_a, prompt_a, digest_a), (rank_b, prompt_b, digest_b) = seen[0][0], seen[1][0]
    assert sorted([(rank_a, prompt_a), (rank_b, prompt_b)]) == [("0", "0"), ("1", "1")]  # its own share each
    assert digest_a == digest_b
    run, other = tmp_path / "rank0", tmp_path / "rank1"
    assert list_files(other) == []  # rank 1 wrote nothing
    assert {"config.yaml", "run.json", "heldout.json", "rounds.jsonl", "reward_curves.png"} <= {
        p.name for p in run.iterdir()} and (run / "checkpoints" / "last.ckpt").is_file()
    (record,) = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert record["world_size"] == 2 and record["prompt"] == [0, 0, 1, 1] and record["rollout"] == [0, 1, 0, 1]
    assert record["rank"] == [0, 0, 1, 1]  # each prompt's group rolled out once, on one rank
    columns = {k: record[k] for k in ("prompt", "rollout", "rank", "reward")}
    assert hashlib.sha1(json.dumps(columns).encode()).hexdigest()[:12] == digest_a  # the table rank 1 holds too
    assert record["mean"]["reward"] == pytest.approx(float(np.mean(record["reward"])), rel=1e-6)
    (metrics,) = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r.get("rollout/reward")]
    assert float(metrics["rollout/reward"]) == pytest.approx(record["mean"]["reward"], rel=1e-6)  # the round's mean
    assert float(metrics["rl/pairs"]) == record["update"]["pairs"] == 2.0  # one pair from each rank


@pytest.mark.parametrize(("overrides", "expected"), [
    (["~reward"], "error: reward: rl_finetune optimises a reward: choose one, e.g. reward=weighted"),
    (["rl=grpo", "rl.rollouts_per_prompt=1"], "error: rl.rollouts_per_prompt: must be >= 2; got 1"),
    (["pairs=/no/such/pairs.jsonl"], "error: pairs: pairs file /no/such/pairs.jsonl does not exist"),
    (["rl=grpo", "pairs=PAIRS"], "error: pairs: GRPOMethod learns from its own rollouts; a pairs file trains"),
    (["rl.optimise=speed_error"], "error: rl.optimise: lower is better for 'speed_error'"),
])
def test_bad_input_stops_in_one_line_before_rollouts(tmp_path, start, capsys, overrides, expected):
    from anisora.tasks.rl_finetune import run

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    overrides = [o.replace("PAIRS", str(pairs)) for o in overrides]
    cfg = compose("rl_finetune", [f"ckpt={start}", f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
                                  "accelerator=cpu", *overrides])
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # as @hydra.main hands it over
    with pytest.raises(SystemExit) as stop:
        run(cfg)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines
