"""A reward dataset from the tiny world, a reward model trained on it, and its held-out Spearman and pair accuracy.

    python -m benchmarks.reward_data                                  # CPU smoke
    python -m benchmarks.reward_data --groups 1024 --val-groups 64 --steps 4000 --batch-groups 8 --hidden 128 \
        --width 64 --frames 17 --workers 1                            # the full run (12 minutes on 2 cores)

Each group is one world clip's prompt and first frame with six videos: the truth and five corruptions (wrong
direction, wrong speed, static, flicker, wrong colour), scored by the ground-truth scorer
(anisora.data.reward_world). The reward model (method=reward_model, trained by train.py on randomly initialised
tiny CLIP towers: no real weights are needed or available offline) learns every ground-truth dimension; the
held-out groups come from the world's validation split. Targets: Spearman >= 0.8 on every dimension and pair
accuracy >= 0.85. Writes benchmarks/results/reward_model.json (metrics, per-label means of truth and prediction).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anisora.data.reward_clips import group_pairs, read_frames, read_guide, read_reward_data  # noqa: E402
from anisora.data.reward_world import DIMENSIONS, write_reward_world  # noqa: E402
from anisora.data.synthetic import WorldConfig  # noqa: E402
from anisora.methods.reward_model import held_out_metrics  # noqa: E402
from anisora.rewards.base import Clip  # noqa: E402
from anisora.rewards.learned import LearnedScorer  # noqa: E402
from anisora.rewards.towers import write_tiny_clip  # noqa: E402
from benchmarks.report import print_key_values  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"spearman": 0.8, "pair_accuracy": 0.85}


def train(args: argparse.Namespace, train_file: Path, val_file: Path, towers: Path) -> Path:
    run_dir = args.out / "run"
    overrides = [f"method.vision={towers}", f"method.train_data={train_file}", f"method.val_data={val_file}",
                 f"method.dimensions=[{','.join(DIMENSIONS)}]", f"method.hidden={args.hidden}",
                 f"method.num_frames={args.frames}", f"method.batch_groups={args.batch_groups}",
                 f"method.pixel_motion={str(args.pixel_motion).lower()}", f"method.num_workers={args.workers}",
                 f"trainer.max_steps={args.steps}", f"trainer.val_every_n_steps={args.steps}",
                 f"optimizer.lr={args.lr}", f"optimizer.warmup_steps={max(1, args.steps // 20)}",
                 f"accelerator={args.accelerator}", "logger=none", "callbacks.progress_bar=none",
                 f"paths.log_dir={args.out / 'logs'}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "method=reward_model", *overrides], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"train.py failed:\n{done.stderr[-3000:]}")
    return run_dir / "checkpoints" / "last.ckpt"


def held_out(ckpt: Path, val_file: Path, accelerator: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics of the learned scorer on the held-out file, and per label the mean truth and prediction."""
    from anisora.accelerators.devices import resolve_device

    scorer = LearnedScorer(str(ckpt), resolve_device(accelerator))
    data = read_reward_data(val_file, "val")
    parts, per_label = [], {}
    for group in data.groups():
        clips = [data.clips[i] for i in group]
        guides = [read_guide(c.guide)[None] if c.guide else None for c in clips]
        preds = scorer.score([Clip(name=str(c.video), frames=read_frames(c.video), prompt=c.prompt,
                                   guide_indices=[0] if g is not None else [], guide_frames=g)
                              for c, g in zip(clips, guides, strict=True)])
        pred = np.array([[p[d] for d in DIMENSIONS] for p in preds])
        truth = np.array([[c.scores.get(d, math.nan) for d in DIMENSIONS] for c in clips])
        pairs = np.array(group_pairs(truth, 0.0), dtype=np.float64).reshape(-1, 4)
        winner, loser, dims = (pairs[:, i].astype(int) for i in range(3))
        parts.append({"pred": pred, "scores": truth, "delta": pred[winner, dims] - pred[loser, dims], "dims": dims,
                      "ties": pairs[:, 3].astype(bool)})
        for c, p, t in zip(clips, pred, truth, strict=True):
            per_label.setdefault(c.label, []).append((p, t))
    metrics = held_out_metrics(parts, DIMENSIONS)
    labels = {}
    for label, rows in per_label.items():
        p, t = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        labels[label] = {f"{d} truth": float(np.nanmean(t[:, i])) for i, d in enumerate(DIMENSIONS)} | {
            f"{d} pred": float(np.mean(p[:, i])) for i, d in enumerate(DIMENSIONS)}
    return metrics, labels


def spearman_ceiling(val_file: Path, draws: int = 50) -> dict[str, float]:
    """Per dimension, two reference Spearmans on the held-out data. `spearman_ceiling`: a perfect ranking whose
    ties are broken at random (a regressor's outputs rarely tie), what a model that orders every distinct score
    rightly reaches when the truth ties a lot. `spearman_label_mean`: a model that knows each clip's corruption
    exactly and predicts its label's mean score, what knowing the corruption alone is worth when the scorer's own
    per-clip measurement (the tracker's error on a well-made clip) spreads the scores inside a label."""
    from anisora.methods.reward_losses import spearman

    data = read_reward_data(val_file, "val")
    truth = np.array([[c.scores.get(d, math.nan) for d in DIMENSIONS] for c in data.clips])
    labels = np.array([c.label for c in data.clips])
    rng = np.random.default_rng(0)
    out = {}
    for i, d in enumerate(DIMENSIONS):
        column = truth[:, i]
        spread = np.nanmax(column) - np.nanmin(column)
        out[f"spearman_ceiling/{d}"] = float(np.mean([
            spearman(column + 1e-9 * spread * rng.random(len(column)), column) for _ in range(draws)]))
        means = {label: np.nanmean(column[labels == label]) for label in set(labels)}
        out[f"spearman_label_mean/{d}"] = spearman(np.array([means[label] for label in labels]), column)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=48, help="training groups (six clips each)")
    parser.add_argument("--val-groups", type=int, default=16)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--pixel-motion", action=argparse.BooleanOptionalAction, default=True,
                        help="the reward model's motion stream (method.pixel_motion)")
    parser.add_argument("--batch-groups", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="data loader workers (method.num_workers)")
    parser.add_argument("--width", type=int, default=32, help="tiny CLIP tower width")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "reward_data", help="data, towers and run")
    parser.add_argument("--result", type=Path, default=RESULTS / "reward_model.json", help="where the row goes")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="only the held-out data's Spearman ceiling (results/reward_ceiling.json)")
    args = parser.parse_args()
    if args.ceiling_only:
        val_file = write_reward_world(args.out / "val", WorldConfig(), 0, args.val_groups, "val")
        row = {"val_groups": args.val_groups, **spearman_ceiling(val_file)}
        print_key_values(row)
        (RESULTS / "reward_ceiling.json").write_text(json.dumps(row, indent=2) + "\n")
        return
    world = WorldConfig()
    start = time.perf_counter()
    train_file = write_reward_world(args.out / "train", world, 0, args.groups, "train")
    val_file = write_reward_world(args.out / "val", world, 0, args.val_groups, "val")
    towers = write_tiny_clip(args.out / "tiny_clip", width=args.width, layers=args.layers)
    built = time.perf_counter()
    ckpt = train(args, train_file, val_file, towers)
    trained = time.perf_counter()
    metrics, labels = held_out(ckpt, val_file, args.accelerator)
    metrics.update(spearman_ceiling(val_file))
    passed = all(metrics.get(f"{m}/{d}", -1.0) >= floor for m, floor in TARGETS.items() for d in DIMENSIONS)
    row = {"date": date.today().isoformat(), "device": args.accelerator,
           "command": "python -m benchmarks.reward_data " + " ".join(sys.argv[1:]), "groups": args.groups,
           "val_groups": args.val_groups, "clips_per_group": 6, "steps": args.steps,
           "towers": f"tiny CLIP, width {args.width}, {args.layers} layers, random init", "frames": args.frames,
           "pixel_motion": args.pixel_motion, "data_s": built - start,
           "train_s": trained - built, **metrics, "targets_met": passed}
    print_key_values(row)
    for label, means in labels.items():
        print(label, {k: round(v, 3) for k, v in means.items()})
    text = json.dumps({**row, "per_label": labels}, indent=2) + "\n"
    (args.out / "reward_model.json").write_text(text)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(text)


if __name__ == "__main__":
    main()
