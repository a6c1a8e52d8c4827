"""Clips per second and peak memory of the model-based reward dimensions and of the learned reward model, with
real-size towers (random weights: speed and memory only), and one reward-model training step.

    python -m benchmarks.reward_models                        # one GPU: 81 frames of 480 x 832
    python -m benchmarks.reward_models --cpu --clips 1 --repeats 1 --group 2   # the same sizes on a CPU
    python -m benchmarks.reward_models --smoke                # tiny towers on any device: checks this script

The towers are the published configurations with random weights (no weights are downloaded): DINO ViT-B/16 for
subject consistency and I2V subject, CLIP ViT-B/32 for background, I2V background, text-video consistency and
CLIP-IQA, CLIP ViT-L/14 with a LAION-style linear head for aesthetic quality, and the reward model
(`method=reward_model`, AnimeReward's six heads) over CLIP ViT-L/14 at 24 sampled frames, its text tower
included. The clip is the synthetic world rendered at full size, as in `benchmarks/rewards.py`. Writes
benchmarks/results/reward_models.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anisora.accelerators.devices import peak_memory_gib, reset_peak_memory, synchronize  # noqa: E402
from anisora.config.schema import ANIME_REWARD_DIMENSIONS  # noqa: E402
from anisora.data.synthetic import WorldConfig, make_clip  # noqa: E402
from anisora.rewards.base import Clip  # noqa: E402
from anisora.rewards.learned import LearnedScorer  # noqa: E402
from anisora.rewards.towers import write_random_clip  # noqa: E402
from anisora.rewards.vbench import VBenchScorer  # noqa: E402
from benchmarks.gpu import benchmark_device, device_name  # noqa: E402
from benchmarks.report import print_key_values  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

#: (vision, text, projection) of the published CLIP configurations, and DINO ViT-B/16's
CLIP_B32 = (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=32),
            dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                 max_position_embeddings=77), 512)
CLIP_L14 = (dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=224, patch_size=14),
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77), 768)
DINO_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=224, patch_size=16)
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def towers(folder: Path, smoke: bool) -> dict[str, str]:
    """Random-weight folders: dino, clip, clip_large and the aesthetic head."""
    from transformers import ViTConfig, ViTModel

    small = (dict(**TINY_TOWER, image_size=32, patch_size=8), dict(**TINY_TOWER, max_position_embeddings=77), 32)
    clip_b, clip_l = (small, small) if smoke else (CLIP_B32, CLIP_L14)
    torch.manual_seed(0)
    ViTModel(ViTConfig(**(dict(**TINY_TOWER, image_size=32, patch_size=8) if smoke else DINO_B16)),
             add_pooling_layer=False).save_pretrained(folder / "dino")
    write_random_clip(folder / "clip", *clip_b)
    write_random_clip(folder / "clip_large", *clip_l)
    torch.save({"weight": torch.randn(1, clip_l[2]) * 0.05, "bias": torch.tensor([5.0])}, folder / "head.pth")
    return {"dino": str(folder / "dino"), "clip": str(folder / "clip"), "clip_large": str(folder / "clip_large"),
            "aesthetic_head": str(folder / "head.pth")}


def timed(device: torch.device, fn, repeats: int) -> tuple[float, float]:
    """Seconds per call after one untimed call, and the peak memory of the timed calls."""
    fn()
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats, peak_memory_gib(device)


def reward_model(vision: str, frames: int, device: torch.device):
    """method=reward_model over `vision` with AnimeReward's six heads, on `device`."""
    from anisora.methods.reward_model import RewardModelMethod

    settings = {"vision": vision, "text": None, "dimensions": list(ANIME_REWARD_DIMENSIONS), "num_frames": frames,
                "hidden": 256, "pixel_motion": True, "train_vision": True, "train_text": True, "pair_loss": "btt",
                "tie_k": 5.0, "regression_weight": 1.0, "pair_weight": 1.0}
    optimizer = {"lr": 2e-6, "betas": [0.9, 0.999], "weight_decay": 0.01, "eps": 1e-8, "warmup_steps": 1}
    return RewardModelMethod(settings, optimizer, max_steps=10).to(device)


def training_step(method, clips: list[Clip], device: torch.device, autocast):
    """One AdamW step of the reward model on one group of `clips` (regression on random scores, every pair), the
    batch built as the reward data module builds one (`group_item`, `group_pairs`, `collate_groups`)."""
    from anisora.data.reward_clips import collate_groups, group_item, group_pairs

    net = method.net
    raw = np.random.default_rng(0).standard_normal((len(clips), len(net.dimensions)))
    item = group_item(torch.stack([net.pixels(c.frames) for c in clips]), [c.prompt for c in clips],
                      [net.guide_pixels(c.guide_frames[0]) for c in clips], raw, raw, group_pairs(raw, 0.0),
                      [None] * len(clips))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate_groups([item]).items()}
    opt = method.configure_optimizers()["optimizer"]

    def step() -> None:
        with autocast():
            loss = method.losses(batch, method.rewards(batch))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--clips", type=int, default=8, help="clips per timed call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--reward-frames", type=int, default=24, help="the reward model's sampled frames")
    parser.add_argument("--group", type=int, default=4, help="clips in the training step's group")
    parser.add_argument("--smoke", action="store_true", help="tiny towers and clips on any device")
    parser.add_argument("--cpu", action="store_true", help="full size on the CPU (minutes per part)")
    parser.add_argument("--out", type=Path, default=RESULTS / "reward_models.json")
    args = parser.parse_args()
    device = torch.device("cpu") if args.cpu else benchmark_device("benchmarks/reward_models.py", args.smoke,
                                                                     "--cpu, or --smoke")
    f, h, w = (9, 64, 64) if args.smoke else (args.frames, args.height, args.width)
    world = WorldConfig(num_frames=f, height=h, width=w, sprite_size=max(9, min(h, w) // 4))
    video = make_clip(world, 0, "benchmark", 0, motion_score=2.0, direction="right")
    clips = [Clip(name=f"c{i}", frames=video.video, prompt=video.caption, guide_indices=[0],
                  guide_frames=video.video[:1].copy()) for i in range(args.clips)]
    bf16 = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    report = {"date": date.today().isoformat(), "device": device_name(device),
              "torch": torch.__version__, "clip": [f, h, w],
              "command": "python -m benchmarks.reward_models " + " ".join(sys.argv[1:]), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = towers(Path(tmp), args.smoke)
        parts = {"DINO ViT-B/16: subject_consistency, i2v_subject": {"dino": paths["dino"]},
                 "CLIP ViT-B/32: background, i2v_background, text_video, imaging_quality_clipiqa":
                     {"clip": paths["clip"]},
                 "CLIP ViT-L/14 + linear head: aesthetic_quality":
                     {"clip_large": paths["clip_large"], "aesthetic_head": paths["aesthetic_head"]}}
        for name, weights in parts.items():
            scorer = VBenchScorer(**{"dino": None, "clip": None, "clip_large": None, "aesthetic_head": None,
                                     **weights}, device=device, batch_frames=32)
            seconds, peak = timed(device, lambda s=scorer: s.score(clips), args.repeats)
            report["rows"].append({"part": name, "clips_per_s": len(clips) / seconds,
                                   "seconds_per_clip": seconds / len(clips), "peak_gib": peak})
            print(json.dumps(report["rows"][-1]), flush=True)
            del scorer
        method = reward_model(paths["clip_large"], args.reward_frames, device)
        scorer = LearnedScorer.of(method.net, device, batch_clips=len(clips))
        with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext():
            seconds, peak = timed(device, lambda: scorer.score(clips), args.repeats)
        report["rows"].append({"part": f"reward model (CLIP ViT-L/14, {args.reward_frames} frames): scoring",
                               "clips_per_s": len(clips) / seconds, "seconds_per_clip": seconds / len(clips),
                               "peak_gib": peak})
        print(json.dumps(report["rows"][-1]), flush=True)
        method.train()
        step = training_step(method, clips[: args.group], device, bf16)
        seconds, peak = timed(device, step, args.repeats)
        trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
        report["rows"].append({"part": f"reward model: one training step, a group of {args.group} clips, every pair",
                               "step_s": seconds, "peak_gib": peak, "trainable_params": trainable,
                               "trainable_params_m": trainable / 1e6})
        print(json.dumps(report["rows"][-1]), flush=True)
    for row in report["rows"]:
        print_key_values(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
