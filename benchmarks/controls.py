"""Control of a trained checkpoint through `python evaluate.py`: every guide mode, a region mask, the motion score.

    python benchmarks/controls.py [--ckpt PATH] [--clips 32] [--out FILE] [-- evaluate.py overrides ...]

On the held-out benchmark of the checkpoint's own world, with its own sampler:
1. guide modes `i2v`, `last`, `flf2v`, `mid` and `region` (a mask that keeps a 3-pixel border of the first frame
   and frees the centre, where the sprites move), each with the default sampler (guided latents put back, so
   guided pixels are exact on the tiny codec) and with `sampler.replace_known=false` (the model alone):
   direction accuracy and guide PSNR (mean / min over every guided pixel that the mask keeps);
2. `motion_score` = the lowest, middle and highest score of the synthetic world (1, 2, 3) in every caption,
   guide i2v: the mean measured sprite speed against the speed the world assigns to that score.

Default checkpoint: the newest outputs/train/*/checkpoints/last.ckpt. Prints a table and writes
benchmarks/results/controls.json (or --out). The evaluation folders go to a temporary folder, removed at the
end unless --keep is given.
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
from tiny_ablation import border_mask  # noqa: E402  (benchmarks/, the script's own folder)

GUIDES: dict[str, list[str]] = {"i2v": [], "last": ["guide=last"], "flf2v": ["guide=flf2v"], "mid": ["guide=mid"],
                                "region": ["guide=region", "guide.mask={mask}"]}
SAMPLERS: dict[str, list[str]] = {"replace": [], "model_alone": ["sampler.replace_known=false"]}
KEPT = ("num_clips", "direction_accuracy", "speed_error", "speed_true_mean", "speed_pred_mean", "first_frame_psnr",
        "guide_psnr_mean", "guide_psnr_min", "temporal_flickering")


def evaluate(ckpt: Path, work: Path, name: str, overrides: list[str]) -> tuple[float, dict]:
    """One `python evaluate.py` into work/name; (seconds, the kept metrics)."""
    run_dir = work / name
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"ckpt={ckpt}", f"paths.log_dir={work}",
                    f"hydra.run.dir={run_dir}", "logger=none", *overrides], cwd=ROOT, check=True,
                   env=dict(os.environ, WANDB_MODE="offline"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return time.perf_counter() - start, {k: metrics.get(k) for k in KEPT}


def main(argv: list[str]) -> None:
    from anisora.data.synthetic import MOTION_SCORE_LEVELS, speed_for_motion_score
    from anisora.inference.loading import read_hparams, trained_data
    from anisora.tasks.common import find_checkpoint
    from anisora.tasks.infer import world_from_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="default: newest outputs/train/*/checkpoints/last.ckpt")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "controls.json")
    parser.add_argument("--keep", action="store_true", help="keep the evaluation folders (videos, reports)")
    parser.add_argument("extra", nargs="*", help="evaluate.py overrides for every evaluation (after --)")
    args = parser.parse_args(argv)
    ckpt = (args.ckpt or find_checkpoint("latest", ROOT / "outputs", "--ckpt")).resolve()
    world = world_from_data(trained_data(read_hparams(ckpt)))
    work = Path(tempfile.mkdtemp(prefix="anisora-controls-"))
    mask = work / "border.png"
    border_mask(mask, world.height, world.width)
    common = [f"num_clips={args.clips}", *args.extra]

    guides: dict[str, dict] = {}
    for guide, guide_overrides in GUIDES.items():
        for sampler, sampler_overrides in SAMPLERS.items():
            overrides = [o.format(mask=mask) for o in guide_overrides] + sampler_overrides
            seconds, metrics = evaluate(ckpt, work, f"{guide}_{sampler}", [*common, *overrides])
            guides.setdefault(guide, {})[sampler] = {"overrides": overrides, "evaluate_s": seconds, **metrics}
    levels = sorted(MOTION_SCORE_LEVELS)
    motion: dict[str, dict] = {}
    for score in (levels[0], levels[len(levels) // 2], levels[-1]):
        seconds, metrics = evaluate(ckpt, work, f"motion{score:g}", [*common, f"motion_score={score}"])
        motion[f"{score:g}"] = {"overrides": [f"motion_score={score}"], "evaluate_s": seconds,
                                "speed_for_score": speed_for_motion_score(world, score), **metrics}

    result = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "command": "python benchmarks/controls.py " + " ".join(argv),
              "ckpt": str(ckpt), "clips": args.clips, "world": world.__dict__, "border_px": 3,
              "guides": guides, "motion_score": motion, "work_dir": str(work) if args.keep else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(guides, motion)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def print_tables(guides: dict[str, dict], motion: dict[str, dict]) -> None:
    def psnr(m: dict) -> str:
        return f"{m['guide_psnr_mean']:.1f} / {m['guide_psnr_min']:.1f}" if m.get("guide_psnr_min") else "-"

    print("\n| guide | direction_accuracy | guide PSNR mean / min (dB) | model alone: accuracy | model alone: PSNR |")
    print("|---|---:|---:|---:|---:|")
    for guide, by_sampler in guides.items():
        a, b = by_sampler["replace"], by_sampler["model_alone"]
        print(f"| {guide} | {a['direction_accuracy']:.3f} | {psnr(a)} | {b['direction_accuracy']:.3f} | {psnr(b)} |")
    print("\n| motion_score | speed for the score (px/frame) | measured speed (px/frame) | direction_accuracy |")
    print("|---:|---:|---:|---:|")
    for score, m in motion.items():
        print(f"| {score} | {m['speed_for_score']:.2f} | {m['speed_pred_mean']:.2f} | {m['direction_accuracy']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
