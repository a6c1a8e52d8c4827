"""Training from encoded shards matches training on the synthetic generator (default tiny model, this CPU).

    python benchmarks/shards_vs_synthetic.py [--keep] [--out FILE] [extra train.py overrides ...]

1. exports the synthetic clips the default tiny training consumes (max_steps x batch_size distinct clips,
   train split, data.seed: the very clips the generator run sees) as lossless FFV1 files + manifest.jsonl;
2. `anisora-data encode` them with the tiny model (guides i2v, flf2v and the no-guide one);
3. `train.py data=shards` with the default settings of benchmarks/tiny_cpu.py, then `evaluate.py` on the
   held-out benchmark exactly as tiny_cpu.py does;
4. trains and evaluates the generator arm the same way in the same run (`train.py` + `evaluate.py` with the
   same overrides, on the same machine at the same load), and compares direction_accuracy.

Prints a table and writes benchmarks/results/shards_vs_synthetic.json (or --out FILE); passes when they agree
within 0.05.
The working folder (sources, about 1.8 GB of shards, runs) is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOLERANCE = 0.05
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "shards_vs_synthetic.json"


def run(*args: str, log_dir: Path | None = None) -> float:
    start = time.perf_counter()
    extra = [f"paths.log_dir={log_dir}"] if log_dir is not None else []
    subprocess.run([sys.executable, *args, *extra], cwd=ROOT, check=True, env=dict(os.environ, WANDB_MODE="offline"))
    return time.perf_counter() - start


def train_defaults(extra: list[str]) -> dict:
    """max_steps, batch size and the world settings of the default training config (with `extra`)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from anisora.config.store import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[o for o in extra if not o.startswith("hydra.")])
    return {"max_steps": cfg.trainer.max_steps, "accumulate": cfg.trainer.accumulate_grad_batches,
            "data": OmegaConf.to_container(cfg.data, resolve=False)}


def evaluate(log_dir: Path) -> tuple[float, dict]:
    seconds = run(str(ROOT / "evaluate.py"), log_dir=log_dir)
    return seconds, json.loads(next(log_dir.glob("evaluate/*/metrics.json")).read_text())


def main(argv: list[str]) -> int:
    from anisora.data.synthetic import WorldConfig
    from anisora.data.synthetic_export import export_world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args, extra = parser.parse_known_args(argv)  # the rest: train.py overrides for both arms
    keep, out = args.keep, args.out
    defaults = train_defaults(extra)
    data = defaults["data"]
    clips = defaults["max_steps"] * defaults["accumulate"] * data["batch_size"]
    work = Path(tempfile.mkdtemp(prefix="anisora-shards-"))
    world = WorldConfig(num_frames=data["num_frames"], height=data["height"], width=data["width"],
                        sprite_size=data["sprite_size"], slowest_speed=data["slowest_speed"])

    start = time.perf_counter()
    manifest = export_world(work / "source", world, int(data["seed"]), clips, clips_per_file=64)
    result: dict = {"clips": clips, "export_s": time.perf_counter() - start}
    result["encode_s"] = run("-m", "anisora.tasks.data_cli", "encode", f"manifest={manifest}",
                             f"out={work / 'shards'}", "accelerator=cpu", "progress=false", log_dir=work / "logs")
    info = json.loads((work / "shards" / "dataset.json").read_text())
    urls = f"{work / 'shards'}/{info['shards']}"
    result.update(shards=info["num_shards"], samples=info["samples"], guides=info["guides"])

    shard_logs = work / "shards-run"
    result["train_shards_s"] = run(str(ROOT / "train.py"), "data=shards", f"data.urls='{urls}'", *extra,
                                   log_dir=shard_logs)
    result["evaluate_shards_s"], shard_metrics = evaluate(shard_logs)

    synth_logs = work / "synthetic-run"  # its own generator arm: same overrides, same machine, same load
    result["train_synthetic_s"] = run(str(ROOT / "train.py"), *extra, log_dir=synth_logs)
    result["evaluate_synthetic_s"], synth_metrics = evaluate(synth_logs)
    synthetic = {"source": "this run", **{f"eval_{k}": v for k, v in synth_metrics.items()}}

    keys = ("direction_accuracy", "speed_error", "first_frame_psnr", "temporal_flickering")
    rows = {k: (synthetic.get(f"eval_{k}"), shard_metrics.get(k)) for k in keys}
    gap = abs(rows["direction_accuracy"][0] - rows["direction_accuracy"][1])
    result.update({
        "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores", "command": "python benchmarks/shards_vs_synthetic.py " + " ".join(argv),
        "synthetic_source": synthetic["source"], "eval_num_clips": shard_metrics.get("num_clips"),
        **{f"synthetic_{k}": a for k, (a, _) in rows.items()}, **{f"shards_{k}": b for k, (_, b) in rows.items()},
        "direction_accuracy_gap": gap, "tolerance": TOLERANCE, "agree": gap <= TOLERANCE,
        "work_dir": str(work) if keep else None,
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'metric':<22}{'synthetic':>12}{'shards':>12}")
    for key, (a, b) in rows.items():
        print(f"{key:<22}{a:>12.3f}{b:>12.3f}")
    print(f"{'train_s':<22}{result['train_synthetic_s']:>12.1f}{result['train_shards_s']:>12.1f}")
    print(f"\nclips {clips} -> {result['shards']} shards; export {result['export_s']:.1f} s, encode "
          f"{result['encode_s']:.1f} s; direction_accuracy gap {gap:.3f} (tolerance {TOLERANCE}): "
          f"{'agree' if result['agree'] else 'DISAGREE'}")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
