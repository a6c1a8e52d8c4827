"""GAPO, DPO, RWR and GRPO from the same tiny SFT checkpoint: held-out reward per evaluation round, direction
accuracy, speed error, guided-frame PSNR (the model alone), flicker and wall time, on the CPU.

    python benchmarks/rl.py [--start CKPT | --sft-steps 800] [--rounds 40] [--eval-every 5] [--eval-prompts 32]
                            [--methods gapo dpo rwr grpo] [--jobs 4 --threads 4] [extra rl_finetune.py overrides ...]
    python benchmarks/rl.py --device-model wan14b [--size 81 480 832] [--lora-rank 32] [--group 4]

`--device-model` instead times, on this machine's accelerator with random weights (`model.init=random`), one GAPO
step (a pair at the given size: policy forward and backward, reference forward, AdamW step) and one GRPO round
(K rollouts with `flow_sde`, then one update on one SDE step), with LoRA policies: s/step, rollouts/s, peak memory
(benchmarks/results/rl_device_<model>.json).

Without --start it first trains the starting checkpoint with `python train.py trainer.max_steps=N` (fewer steps
than the default, so the held-out direction accuracy leaves room to improve). Every method runs
`python rl_finetune.py ckpt=START rl=M ...` with the same overrides; the held-out figures are those each run writes
to heldout.json. Prints the tables and writes benchmarks/results/rl_tiny.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("reward", "direction_correct", "speed_error", "guide_psnr", "temporal_flickering")


def run(script: str, overrides: list[str], log_dir: Path, run_dir: Path, threads: int) -> float:
    start = time.perf_counter()
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, str(ROOT / script), f"paths.log_dir={log_dir}", f"hydra.run.dir={run_dir}",
                           "callbacks.progress_bar=none", f"accelerator.num_threads={threads}", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if done.returncode not in (0, 3):  # 3: a guard rail stopped the run (its history is still written)
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def method_row(name: str, start: Path, args: argparse.Namespace, extra: list[str], root: Path) -> dict:
    run_dir = root / "rl_finetune" / name
    overrides = [f"ckpt={start}", f"rl={name}", f"rl.rounds={args.rounds}", f"rl.eval_every={args.eval_every}",
                 f"rl.eval_prompts={args.eval_prompts}", "logger=none", *extra]
    wall = run("rl_finetune.py", overrides, root, run_dir, args.threads)
    history = json.loads((run_dir / "heldout.json").read_text())
    return {"method": name, "wall_s": round(wall, 1), "history": history,
            **{f"{k}_start": history[0][k] for k in COLUMNS}, **{k: history[-1][k] for k in COLUMNS}}


def print_tables(rows: list[dict]) -> None:
    rounds = [int(h["round"]) for h in rows[0]["history"]]
    print("held-out reward per round\n" + "method  " + "  ".join(f"{r:>6d}" for r in rounds))
    for row in rows:
        print(f"{row['method']:<6}  " + "  ".join(f"{h['reward']:6.3f}" for h in row["history"]))
    print("\nmethod  " + "  ".join(f"{c:>22}" for c in COLUMNS) + "  wall_s")
    for row in rows:
        cells = [f"{row[c + '_start']:9.3f} -> {row[c]:9.3f}" for c in COLUMNS]
        print(f"{row['method']:<6}  " + "  ".join(f"{c:>22}" for c in cells) + f"  {row['wall_s']:6.1f}")


# ----------------------------------------------------------------------------- real-size timing
REWARD = {"name": "weighted", "scorers": ["ground_truth"], "weights": {"direction_correct": 1.0}}


def manual_steps(method, lr: float = 1e-4) -> None:
    """The method's optimizer steps without a Lightning loop (AdamW on the policy's adapter)."""
    import torch

    optimizer = torch.optim.AdamW(method.roles.parameters_of("policy"), lr=lr)

    def step_role(role, loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    method.step_role = step_role
    method.log = lambda *a, **k: None
    method.batches_seen, method._in_round = 1, True


def write_device_result(args: argparse.Namespace, rows: dict) -> None:
    """benchmarks/results/rl_device_<model>.json with the rows measured so far (a row cut off by a time limit
    leaves the earlier ones written)."""
    result = {"date": date.today().isoformat(), "command": "python benchmarks/rl.py " + " ".join(sys.argv[1:]),
              "model": args.device_model, "size": args.size, "lora_rank": args.lora_rank, **rows}
    out = ROOT / "benchmarks" / "results" / f"rl_device_{args.device_model}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1), flush=True)


def device_rows(args: argparse.Namespace) -> dict:
    import torch
    from omegaconf import OmegaConf

    from anisora.accelerators.devices import (
        activation_dtype,
        empty_cache,
        peak_memory_gib,
        reset_peak_memory,
        resolve_device,
        synchronize,
    )
    from anisora.backbones.checkpointing import apply_activation_checkpointing
    from anisora.config.store import compose_in_process
    from anisora.methods.preference.grpo import GRPOMethod
    from anisora.methods.preference.pairwise import Pairs, PairwiseMethod
    from anisora.methods.preference.rounds import take

    frames, height, width = args.size
    random = [] if args.device_model.startswith("tiny") else ["model.init=random"]
    cfg = compose_in_process(str(ROOT / "conf"), "train", [
        f"model={args.device_model}", *random, f"data.num_frames={frames}", f"data.height={height}",
        f"data.width={width}", "optimizer.ema_decay=0", f"accelerator={args.accelerator}",
        f"accelerator.precision={args.precision}"])
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True)
             for k in ("model", "guide", "optimizer", "sampler", "data")}
    device = resolve_device(args.accelerator)
    dtype = activation_dtype(args.precision)
    lora = {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank}
    frozen = "bfloat16" if dtype == torch.bfloat16 else "float32"
    video = torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"video": video, "caption": ["a red slime moves left across the meadow."], "seed": [0], "truth": [None]}
    rows = {}

    def build(cls, rl):
        start = time.perf_counter()
        settings = {"rollouts_per_prompt": args.group, "prompts_per_round": 1, "updates_per_round": 1,
                    "rollout_steps": args.rollout_steps, **rl}
        try:
            with torch.device(device):  # random weights drawn on the accelerator: minutes faster than on the host
                method = cls(rl=settings, reward=REWARD, max_steps=10, role_lora=lora, frozen_dtype=frozen, **parts)
        except RuntimeError as ex:  # a part that draws from a host generator: build on the host instead
            print(f"building on {device} failed ({str(ex).splitlines()[0][:200]}); building on the host", flush=True)
            method = cls(rl=settings, reward=REWARD, max_steps=10, role_lora=lora, frozen_dtype=frozen, **parts)
        method = method.to(device)
        print(f"built {cls.__name__} in {time.perf_counter() - start:.1f} s", flush=True)
        apply_activation_checkpointing(method.backbone, "full")
        manual_steps(method)
        return method

    def timed(fn):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = fn()
        synchronize(device)
        return time.perf_counter() - start, out

    def gapo_row() -> dict:
        method = build(PairwiseMethod, {"weighting": "gap"})
        with torch.no_grad():
            guide, mask = method.guide_pairs(video.to(device))
            cond = method.backbone.conditioning(batch["caption"] * 2, guide.repeat(2, 1, 1, 1, 1),
                                                mask.repeat(2, 1, 1, 1))
            x0 = torch.randn(2, *method.backbone.latent_shape(frames, height, width), device=device)
        pairs = Pairs(x0[:1], x0[1:], take(cond, [0, 1]), [0], torch.tensor([0.9]), torch.tensor([0.2]))

        def step():
            loss, _ = method.pair_loss(pairs, 0)
            method.step_role("policy", loss)

        timed(step)  # warm-up
        reset_peak_memory(device)
        times = [timed(step)[0] for _ in range(args.repeats)]
        return {"s_per_step": min(times), "peak_gib": peak_memory_gib(device)}

    rows["gapo_step"] = gapo_row()
    write_device_result(args, rows)
    empty_cache()

    method = build(GRPOMethod, {"train_steps": 1})
    reset_peak_memory(device)
    collect_s, samples = timed(lambda: method.collect(batch))
    samples.rewards = torch.arange(args.group, dtype=torch.float32)  # random weights: a spread to learn from
    update_s, _ = timed(lambda: method.update(samples))
    rows["grpo_round"] = {"rollouts": args.group, "rollout_steps": args.rollout_steps, "rollout_s": collect_s,
                          "rollouts_per_s": args.group / collect_s, "update_s": update_s,
                          "round_s": collect_s + update_s, "peak_gib": peak_memory_gib(device)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=Path, help="starting checkpoint (default: train one with --sft-steps)")
    parser.add_argument("--sft-steps", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=["gapo", "dpo", "rwr", "grpo"])
    parser.add_argument("--jobs", type=int, default=1, help="methods run side by side")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    parser.add_argument("--device-model", help="time one GAPO step and one GRPO round of this model (random weights)")
    parser.add_argument("--size", type=int, nargs=3, default=[81, 480, 832], metavar=("FRAMES", "HEIGHT", "WIDTH"))
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--group", type=int, default=4, help="GRPO rollouts per prompt (K)")
    parser.add_argument("--rollout-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--out", type=Path, help="results file (default: benchmarks/results/rl_tiny.json)")
    args, extra = parser.parse_known_args()
    if args.device_model:
        write_device_result(args, device_rows(args))
        return
    root = Path(tempfile.mkdtemp(prefix="anisora-rl-"))
    start, sft_s = args.start, None
    if start is None:
        sft_s = run("train.py", [f"trainer.max_steps={args.sft_steps}", "logger=none", "callbacks.sample_videos=false"],
                    root, root / "train" / "sft", max(args.threads, 2))
        start = root / "train" / "sft" / "checkpoints" / "last.ckpt"
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda m: method_row(m, start, args, extra, root), args.methods))
    print_tables(rows)
    result = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "command": "python benchmarks/rl.py " + " ".join(sys.argv[1:]),
              "start": str(start), "sft_steps": None if args.start else args.sft_steps, "sft_s": sft_s,
              "threads_per_run": args.threads, "rows": rows}
    out = args.out or ROOT / "benchmarks" / "results" / "rl_tiny.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
