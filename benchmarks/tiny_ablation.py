"""Training ablations of the tiny model, run side by side on a many-core CPU machine.

    python benchmarks/tiny_ablation.py [--threads 2] [--clips 64] [--only NAME ...] [-- train.py overrides]

Each variant is `python train.py` with a few overrides, then `python evaluate.py` on the held-out
benchmark (with the default sampler and with `sampler.guidance_scale=7`). Variants run in parallel,
`--threads` CPU threads each, so on a 16-core machine eight of them take the wall time of one.
Prints a table (direction accuracy overall and on the slower and faster half of the speeds) and
writes benchmarks/results/tiny_ablation.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "plain_mse": ["model.objective.motion_weight=0"],
    "default": [],
    "default_seed1": ["seed=1", "data.seed=1", "model.init_seed=1"],
    "default_seed2": ["seed=2", "data.seed=2", "model.init_seed=2"],
    "motion_weight2": ["model.objective.motion_weight=2"],
    "motion_weight8": ["model.objective.motion_weight=8"],
    "motion_weight16": ["model.objective.motion_weight=16"],
    "residual": ["model.residual_latents=true"],
    "slowest0.5": ["data.slowest_speed=0.5"],
    "plain_mse_residual": ["model.objective.motion_weight=0", "model.residual_latents=true"],
    "guide_weight2": ["model.objective.guide_weight=2"],
    "guide_weight4": ["model.objective.guide_weight=4"],
    "region0.2": ["guide.p_region=0.2"],
    "gw2_region0.2": ["model.objective.guide_weight=2", "guide.p_region=0.2"],
    "gw4_region0.2": ["model.objective.guide_weight=4", "guide.p_region=0.2"],
    "gw4_random0.7": ["model.objective.guide_weight=4", "guide.p_random_main=0.7"],
    "gw4_region0.2_random0.7": ["model.objective.guide_weight=4", "guide.p_region=0.2", "guide.p_random_main=0.7"],
    # the tiny CogVideoX (AniSora V1's layout, v-prediction)
    "cog": ["model=tiny_cogvideox"],
    "cog_snr3": ["model=tiny_cogvideox", "model.snr_shift_scale=3"],
    "cog_plain_mse": ["model=tiny_cogvideox", "model.objective.motion_weight=0"],
    "cog_lr2e-3": ["model=tiny_cogvideox", "optimizer.lr=2e-3"],
    "cog_snr3_lr2e-3": ["model=tiny_cogvideox", "model.snr_shift_scale=3", "optimizer.lr=2e-3"],
    "cog_snr3_plain_mse": ["model=tiny_cogvideox", "model.snr_shift_scale=3", "model.objective.motion_weight=0"],
    "cog_batch8": ["model=tiny_cogvideox", "data.batch_size=8"],
}
ACCURACY_KEYS = ("direction_accuracy", "direction_accuracy_slow", "direction_accuracy_fast")
EVALUATION_SETS: dict[str, dict[str, list[str]]] = {
    "sampler": {"g5": [], "g7": ["sampler.guidance_scale=7"]},
    "guides": {"i2v": [], "last": ["guide=last"], "flf2v": ["guide=flf2v"], "mid": ["guide=mid"],
               "region": ["guide=region", "guide.mask={root}/border.png"]},
}
KEPT = ("direction_accuracy", "first_frame_psnr", "speed_error", "temporal_flickering", "guide_psnr_min",
        "guide_psnr_mean")


def border_mask(path: Path, height: int = 16, width: int = 16, border: int = 3) -> None:
    """White (kept) 3-pixel frame around a black (free) centre, where the sprites move."""
    from PIL import Image

    keep = np.zeros((height, width, 3), np.uint8)
    keep[:border], keep[-border:], keep[:, :border], keep[:, -border:] = 255, 255, 255, 255
    Image.fromarray(keep).save(path)


def run(script: str, args: list[str], log: Path, threads: int, cpus: str | None = None) -> float:
    """`python script args` with `threads` CPU threads (pinned to the cores `cpus`, e.g. "2,3", where taskset
    exists, so runs side by side do not share cores); its wall time."""
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pin = ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []
    command = [sys.executable, str(ROOT / script), *args] if script.endswith(".py") else [script, *args]
    start = time.perf_counter()
    with log.open("a") as fh:
        subprocess.run([*pin, *command], cwd=ROOT, check=True, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def split_accuracy(per_clip: Path) -> dict[str, float]:
    """Direction accuracy on the slower and the faster half of the benchmark's true speeds."""
    rows = [json.loads(line) for line in per_clip.read_text().splitlines() if line.strip()]
    speeds = sorted({r["speed_true"] for r in rows})
    middle = (speeds[0] + speeds[-1]) / 2
    out = {}
    for name, keep in (("slow", lambda s: s < middle), ("fast", lambda s: s >= middle)):
        part = [r for r in rows if keep(r["speed_true"])]
        hits = sum(r["direction_pred"] == r["direction_true"] for r in part)
        out[f"direction_accuracy_{name}"] = hits / max(1, len(part))
    return out


def variant(name: str, overrides: list[str], root: Path, threads: int, clips: int, extra: list[str],
            evaluations: dict[str, list[str]]) -> dict:
    log_dir = root / name
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "log.txt"
    common = [f"paths.log_dir={log_dir}", "accelerator=cpu", f"accelerator.num_threads={threads}"]
    result: dict = {"overrides": overrides}
    result["train_s"] = run("train.py", [*common, "logger=csv", *overrides, *extra], log, threads)
    for tag, evaluation in evaluations.items():
        before = set(log_dir.glob("evaluate/*"))
        evaluation = [e.format(root=root) for e in evaluation]
        run("evaluate.py", [*common, "logger=none", f"num_clips={clips}", *evaluation], log, threads)
        folder = sorted(set(log_dir.glob("evaluate/*")) - before)[-1]
        metrics = json.loads((folder / "metrics.json").read_text())
        result[tag] = {k: metrics.get(k) for k in KEPT}
        result[tag].update(split_accuracy(folder / "per_clip.jsonl"))
    print(f"done {name}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--evals", choices=list(EVALUATION_SETS), default="sampler",
                        help="sampler: CFG 5 and 7; guides: i2v, last, flf2v, mid and a region mask")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tiny_ablation.json")
    parser.add_argument("extra", nargs="*", help="train.py overrides for every variant (after --)")
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"--only: unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    jobs = max(1, (os.cpu_count() or 2) // args.threads)
    root = Path(tempfile.mkdtemp(prefix="anisora-ablation-"))
    border_mask(root / "border.png")
    evaluations = EVALUATION_SETS[args.evals]
    results: dict[str, dict] = {}
    report = {"date": date.today().isoformat(), "machine": f"{os.cpu_count()} cores, {args.threads} threads per run",
              "command": "python benchmarks/tiny_ablation.py " + " ".join(sys.argv[1:]), "clips": args.clips,
              "variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(variant, n, VARIANTS[n], root, args.threads, args.clips, args.extra, evaluations): n
                   for n in names}
        for fut in as_completed(futures):
            n = futures[fut]
            try:
                results[n] = fut.result()
            except subprocess.CalledProcessError as err:
                log = (root / n / "log.txt").read_text()[-2000:]
                results[n] = {"overrides": VARIANTS[n], "error": str(err), "log": log}
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each variant: a cut-off run keeps the rest
    print_table(names, results, evaluations)


def print_table(names: list[str], results: dict[str, dict], evaluations: dict[str, list[str]]) -> None:
    """Per evaluation: direction accuracy (slow / fast half for the sampler set), guide PSNR min / mean."""
    tags = list(evaluations)
    print("\n| variant | train s | " + " | ".join(f"{t}: acc, guide PSNR min/mean" for t in tags) + " |")
    print("|---|---|" + "---|" * len(tags))
    for n in names:
        r = results[n]
        if "error" in r:
            print(f"| {n} | failed: {r['error']} |")
            continue
        cells = [f"{r['train_s']:.0f}"]
        for t in tags:
            m = r[t]
            acc = " / ".join(f"{m[k]:.3f}" for k in ACCURACY_KEYS if m.get(k) is not None)
            psnr = f"{m['guide_psnr_min']:.1f} / {m['guide_psnr_mean']:.1f}" if m.get("guide_psnr_min") else "-"
            cells.append(f"{acc}, {psnr}")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
