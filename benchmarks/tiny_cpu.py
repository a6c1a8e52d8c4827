"""The tiny model end to end on this machine: train, infer, evaluate; wall times and benchmark metrics.

    python benchmarks/tiny_cpu.py [extra train.py overrides ...]

Prints a table and writes benchmarks/results/tiny_cpu.json. This is the run behind the README's figures.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from report import print_key_values  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]


def timed(script: str, *overrides: str, log_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / script), f"paths.log_dir={log_dir}", *overrides], cwd=ROOT, check=True,
                   env=dict(os.environ, WANDB_MODE="offline"))
    return time.perf_counter() - start


def main(extra: list[str]) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="anisora-bench-"))
    times = {
        "train_s": timed("train.py", *extra, log_dir=log_dir),
        "infer_s": timed("infer.py", "out.frames=png", log_dir=log_dir),
        "evaluate_s": timed("evaluate.py", log_dir=log_dir),
    }
    metrics = json.loads(next(log_dir.glob("evaluate/*/metrics.json")).read_text())
    samples = json.loads(next(log_dir.glob("infer/*/samples.json")).read_text())
    infer_psnr = min(min(float(s["guide_psnr_db"]["0"]), 100.0) for s in samples)  # identical frames: capped
    result = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "command": "python benchmarks/tiny_cpu.py " + " ".join(extra),
              **times, "infer_first_frame_psnr_min": infer_psnr, **{f"eval_{k}": v for k, v in metrics.items()}}
    out = ROOT / "benchmarks" / "results" / "tiny_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_key_values(result)


if __name__ == "__main__":
    main(sys.argv[1:])
