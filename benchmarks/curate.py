"""`anisora-data curate` throughput on 480p input and its accuracy on synthetic corpora with ground truth.

    python benchmarks/curate.py [--videos 6] [--shots 8] [--workers 2] [--seeds 0 1 2 3 4 5 6 7 8 9]
    python benchmarks/curate.py --seeds-only         # only the seed sweep -> results/curate_seeds.json

Generates a 480p (640x480, 24 fps) corpus and the 160x120 test corpus (the one tests/test_curate.py
uses), curates both through the CLI, prints a table and writes benchmarks/results/curate.json. Then curates
the test corpus for every seed of `--seeds` and records, per threshold, the range of its score over the
planted clips it should reject and over every other clip: the margin a threshold has on each side
(in curate.json, or alone in results/curate_seeds.json with --seeds-only).
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
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anisora.data.curation.corpus import evaluate, make_corpus  # noqa: E402
from anisora.data.manifest import read_manifest  # noqa: E402


def curate(folder: Path, out: Path, workers: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "anisora.tasks.data_cli", "curate", f"input={folder}", f"out={out}",
                    f"workers={workers}", "progress=false"], cwd=ROOT, check=True)
    return time.perf_counter() - start


def accuracy(result: dict) -> dict:
    return {k: {"precision": round(v["precision"], 3), "recall": round(v["recall"], 3), "planted": v["actual"]}
            for k, v in result.items()}


# threshold -> (score, planted kind it rejects, "max" (reject above) or "min" (reject below))
THRESHOLDS = {"text.max": ("text", "text", "max"), "border.max": ("border", "letterbox", "max"),
              "static.min": ("change", "static", "min")}


def planted_kind(truth, record) -> str:
    """The kind of the true shot a clip overlaps most (as the corpus evaluation matches them)."""
    video = next(v for v in truth.videos if v.path == record.source)
    return max(video.shots, key=lambda s: min(record.end_frame, s.end) - max(record.start_frame, s.start)).kind


def score_ranges(truth, records: list) -> dict:
    """Per threshold: [min, max] of its score over the planted clips and over all other clips."""
    out = {}
    for name, (score, kind, _) in THRESHOLDS.items():
        values: dict[bool, list[float]] = {True: [], False: []}
        for r in records:
            if r.error is None and score in r.scores:
                values[planted_kind(truth, r) == kind].append(float(r.scores[score]))
        out[name] = {"planted": [min(values[True]), max(values[True])],
                     "others": [min(values[False]), max(values[False])]}
    return out


def seed_sweep(work: Path, seeds: list[int], workers: int) -> dict:
    """Accuracy and score ranges of the test corpus for each seed, and the margins of the configured thresholds
    over all of them (distance from the threshold to the nearest score on the wrong side, as a ratio)."""
    from anisora.config.store import compose_in_process

    per_seed, ranges = {}, []
    for seed in seeds:
        truth = make_corpus(work / f"seed{seed}", videos=4, shots_per_video=8, seed=seed)
        curate(work / f"seed{seed}", work / f"seed{seed}_out", workers)
        records = list(read_manifest(work / f"seed{seed}_out" / "manifest.jsonl"))
        per_seed[str(seed)] = {"accuracy": accuracy(evaluate(truth, records)), "scores": score_ranges(truth, records)}
        ranges.append(per_seed[str(seed)]["scores"])
    defaults = compose_in_process(str(ROOT / "conf"), "curate", ["input=x", "out=x"])  # conf/curate.yaml's values
    margins = {}
    for name, (_, _, side) in THRESHOLDS.items():
        group, key = name.split(".")
        threshold = getattr(getattr(defaults, group), key)
        planted = [r[name]["planted"] for r in ranges]
        others = [r[name]["others"] for r in ranges]
        if side == "max":  # planted clips must score above, the others at or below
            lowest_planted, highest_other = min(p[0] for p in planted), max(o[1] for o in others)
            margins[name] = {"threshold": threshold, "highest_other": highest_other,
                             "lowest_planted": lowest_planted, "other_ratio": threshold / highest_other
                             if highest_other else None, "planted_ratio": lowest_planted / threshold}
        else:
            highest_planted, lowest_other = max(p[1] for p in planted), min(o[0] for o in others)
            margins[name] = {"threshold": threshold, "lowest_other": lowest_other,
                             "highest_planted": highest_planted, "other_ratio": lowest_other / threshold,
                             "planted_ratio": threshold / highest_planted if highest_planted else None}
    worst = {k: min(per_seed[s]["accuracy"][k][m] for s in per_seed for m in ("precision", "recall"))
             for k in ("shots", "static", "text", "letterbox", "duplicate")}
    return {"seeds": seeds, "per_seed": per_seed, "worst_precision_or_recall": worst, "margins": margins}


def print_sweep(sweep: dict) -> None:
    print(f"\ntest corpus over seeds {sweep['seeds']}: worst precision or recall {sweep['worst_precision_or_recall']}")
    for name, m in sweep["margins"].items():
        print(f"{name}: {m}")


def sweep_only(work: Path, args) -> None:
    result = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "workers": args.workers,
              "command": "python benchmarks/curate.py " + " ".join(sys.argv[1:]),
              **seed_sweep(work, args.seeds, args.workers)}
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "curate_seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    print_sweep(result)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(10)), help="test corpus seeds")
    parser.add_argument("--seeds-only", action="store_true", help="skip the 480p run: the seed sweep alone")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anisora-curate-bench-"))
    if args.seeds_only:
        sweep_only(work, args)
        return

    start = time.perf_counter()
    big = make_corpus(work / "480p", videos=args.videos, shots_per_video=args.shots, height=480, width=640, fps=24,
                      seed=0)
    generate_s = time.perf_counter() - start
    seconds = sum(v.shots[-1].end / v.fps for v in big.videos)
    shot_s = [(s.end - s.start) / v.fps for v, s in big.shots()]
    curate_s = curate(work / "480p", work / "480p_out", args.workers)
    records = list(read_manifest(work / "480p_out" / "manifest.jsonl"))
    clips = sum(r.error is None for r in records)

    small = make_corpus(work / "test", videos=4, shots_per_video=8, seed=0)
    curate(work / "test", work / "test_out", args.workers)
    small_records = list(read_manifest(work / "test_out" / "manifest.jsonl"))

    result = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "workers": args.workers,
        "input_480p": {"videos": args.videos, "video_minutes": round(seconds / 60, 2), "size": "640x480",
                       "fps": 24, "clips": clips, "generate_s": round(generate_s, 1),
                       "shots": len(shot_s), "shot_s_min": round(min(shot_s), 2), "shot_s_max": round(max(shot_s), 2)},
        "curate_s": round(curate_s, 1),
        "clips_per_minute": round(clips / curate_s * 60, 1),
        "video_minutes_per_minute": round(seconds / curate_s, 2),
        "accuracy_480p": accuracy(evaluate(big, records)),
        "accuracy_test_corpus": accuracy(evaluate(small, small_records)),
        "command": "python benchmarks/curate.py " + " ".join(sys.argv[1:]),
    }
    if args.seeds:
        result["test_corpus_seeds"] = seed_sweep(work, args.seeds, args.workers)
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "curate.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n480p: {result['input_480p']['video_minutes']} min of video, {clips} clips, {args.workers} workers on "
          f"{result['cores']} cores: {curate_s:.1f} s -> {result['clips_per_minute']} clips/min, "
          f"{result['video_minutes_per_minute']} min of video per minute")
    print(f"{'check':<10} {'test P':>7} {'test R':>7} {'480p P':>7} {'480p R':>7} {'planted':>8}")
    for key in ("shots", "static", "text", "letterbox", "duplicate"):
        a, b = result["accuracy_test_corpus"][key], result["accuracy_480p"][key]
        print(f"{key:<10} {a['precision']:>7.3f} {a['recall']:>7.3f} {b['precision']:>7.3f} {b['recall']:>7.3f} "
              f"{a['planted']:>4}/{b['planted']:<3}")
    if args.seeds:
        print_sweep(result["test_corpus_seeds"])


if __name__ == "__main__":
    main()
