"""`anisora-data curate` throughput on 480p input and its accuracy on synthetic corpora with ground truth.

    python benchmarks/curate.py [--videos 6] [--shots 8] [--workers 2]

Generates a 480p (640x480, 24 fps) corpus and the 160x120 test corpus (the one tests/test_curate.py
uses), curates both through the CLI, prints a table and writes benchmarks/results/curate.json.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anisora-curate-bench-"))

    start = time.perf_counter()
    big = make_corpus(work / "480p", videos=args.videos, shots_per_video=args.shots, height=480, width=640, fps=24,
                      seed=0)
    generate_s = time.perf_counter() - start
    seconds = sum(v.shots[-1].end / v.fps for v in big.videos)
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
                       "fps": 24, "clips": clips, "generate_s": round(generate_s, 1)},
        "curate_s": round(curate_s, 1),
        "clips_per_minute": round(clips / curate_s * 60, 1),
        "video_minutes_per_minute": round(seconds / curate_s, 2),
        "accuracy_480p": accuracy(evaluate(big, records)),
        "accuracy_test_corpus": accuracy(evaluate(small, small_records)),
    }
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


if __name__ == "__main__":
    main()
