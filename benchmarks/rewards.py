"""CPU seconds per clip of each weight-free dimension (anisora.rewards) at a given clip size.

    python benchmarks/rewards.py                        # 81 frames of 480 x 832, one clip
    python benchmarks/rewards.py --frames 17 --height 64 --width 64

The clip is the synthetic world rendered at that size (a moving sprite over a cel background), so the flow and the
static detector see real motion. Writes benchmarks/results/rewards_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from anisora.config.schema import StaticConfig
from anisora.data.curation.scores import opencv_flow
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.evaluation.metrics import temporal_flickering
from anisora.rewards.base import Clip
from anisora.rewards.fidelity import guide_psnr_scores, guide_ssim_scores
from anisora.rewards.motion import dynamic_scores, motion_smoothness_blend, static_scores
from benchmarks.report import print_key_values

RESULTS = Path(__file__).resolve().parent / "results"


def seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1: one core per clip)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    world = WorldConfig(num_frames=args.frames, height=args.height, width=args.width,
                        sprite_size=max(9, min(args.height, args.width) // 4))
    frames = make_clip(world, 0, "benchmark", 0, motion_score=2.0, direction="right").video
    guided = Clip(name="c", frames=frames, guide_indices=[0, len(frames) - 1], guide_frames=frames[[0, -1]].copy(),
                  guide_keep=np.ones((2, *frames.shape[1:3]), dtype=bool))
    static = StaticConfig()
    dims = {
        "temporal_flickering": lambda: temporal_flickering(frames),
        "dynamic_degree_farneback": lambda: dynamic_scores(frames, opencv_flow("farneback")),
        "dynamic_degree_dis": lambda: dynamic_scores(frames, opencv_flow("dis")),
        "motion_smoothness_blend": lambda: motion_smoothness_blend(frames),
        "static": lambda: static_scores(frames, static.frames, static.pixel_delta, static.min),
        "guide_psnr (2 guided frames)": lambda: guide_psnr_scores(guided),
        "guide_ssim (2 guided frames)": lambda: guide_ssim_scores(guided),
    }
    row = {"clip": f"{args.frames} x {args.height} x {args.width}", "opencv_threads": args.threads,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    row |= {f"{name} s/clip": seconds(fn, args.repeats) for name, fn in dims.items()}
    print_key_values(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rewards_cpu.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
