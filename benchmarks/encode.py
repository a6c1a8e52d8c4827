"""Latent encoding throughput: clips per second of `anisora-data encode` for a real-size backbone on one GPU.

    python benchmarks/encode.py [--model wan1.3b] [--clips 16] [--guides i2v flf2v]   # 480x832, 81 frames, bf16
    python benchmarks/encode.py --smoke                                                # toy sizes on the CPU

Random weights at the model's true size, built directly on the GPU in bf16 (VAE fp32) as
benchmarks/backbones.py builds them. N synthetic-world clips are exported at the native clip size as
lossless FFV1 files plus a manifest, then encoded end to end through the same code as `anisora-data
encode` (anisora.data.encode.encode_shards: decode, VAE, text encoder, guide conditioning, tar writing).
One clip is encoded first to warm up. Prints a table and writes benchmarks/results/encode.json
(not with --smoke).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from backbones import NATIVE, build  # noqa: E402
from report import print_key_values  # noqa: E402

from anisora.accelerators.devices import peak_memory_gib, reset_peak_memory, resolve_device, synchronize  # noqa: E402
from anisora.data.clip_source import ClipFormat, SourceReader  # noqa: E402
from anisora.data.encode import EncodeSettings, encode_shards  # noqa: E402
from anisora.data.manifest import read_manifest  # noqa: E402
from anisora.data.synthetic import WorldConfig  # noqa: E402
from anisora.data.synthetic_export import export_world  # noqa: E402
from benchmarks.gpu import device_name  # noqa: E402


def timed(device: torch.device, fn, *args, **kwargs):
    synchronize(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    synchronize(device)
    return out, time.perf_counter() - start


@torch.no_grad()
def stage_times(backbone, record, fmt: ClipFormat, device: torch.device) -> dict[str, float]:
    """Seconds of each stage for one clip (after the warm-up)."""
    frames, read_s = timed(device, SourceReader().frames, record, fmt)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float()[None].to(device) / 127.5 - 1.0
    _, vae_s = timed(device, backbone.encode_video, video)
    _, text_s = timed(device, backbone.encode_prompt, [record.caption or ""])
    g, m = torch.zeros_like(video), torch.zeros(1, *video.shape[2:], device=device)
    g[:, :, 0], m[:, 0] = video[:, :, 0], 1.0
    _, guide_s = timed(device, backbone.condition, g, m)
    _, image_s = timed(device, backbone.encode_image, g, m)
    return {"read_s": read_s, "vae_encode_s": vae_s, "text_encode_s": text_s, "guide_condition_s": guide_s,
            "image_encode_s": image_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan1.3b", choices=sorted(NATIVE))
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--guides", nargs="*", default=["i2v", "flf2v"])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to check this script")
    args = parser.parse_args()

    device = torch.device("cpu") if args.smoke else resolve_device("gpu")
    frames, height, width = (9, 64, 64) if args.smoke else NATIVE[args.model]
    clips = 2 if args.smoke else args.clips
    work = Path(tempfile.mkdtemp(prefix="anisora-encode-bench-"))
    world = WorldConfig(num_frames=frames, height=height, width=width, sprite_size=max(6, height // 10))
    start = time.perf_counter()
    manifest = export_world(work / "source", world, seed=0, count=clips + 1, clips_per_file=1)
    export_s = time.perf_counter() - start
    records = list(read_manifest(manifest, kept_only=True))

    backbone, build_s = timed(device, build, args.model, device, args.smoke)
    fmt = ClipFormat(frames, height, width)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    settings = EncodeSettings(fmt, tuple(args.guides), dtype, max_samples=8, max_bytes=2**34)
    encode_shards(backbone, records[:1], work / "warmup", settings, show_progress=False)  # kernels, allocator
    reset_peak_memory(device)
    info, encode_s = timed(device, encode_shards, backbone, records[1:], work / "shards", settings,
                           show_progress=False)
    stages = stage_times(backbone, records[1], fmt, device)
    tar_bytes = sum(p.stat().st_size for p in (work / "shards").glob("*.tar"))
    row = {"date": date.today().isoformat(), "device": device_name(device),
           "model": args.model, "smoke": args.smoke, "frames": frames, "height": height, "width": width,
           "dtype": str(dtype).removeprefix("torch."), "guides": info["guides"], "clips": clips,
           "export_s": export_s, "build_s": build_s, "encode_s": encode_s, "clips_per_s": clips / encode_s,
           "s_per_clip": encode_s / clips, **stages, "peak_gib": peak_memory_gib(device),
           "bytes_per_sample": tar_bytes / max(info["samples"], 1), "latent_shape": info["latent_shape"],
           "command": "python benchmarks/encode.py " + " ".join(sys.argv[1:])}
    if not args.smoke:  # a smoke run checks the script; its numbers mean nothing
        out = ROOT / "benchmarks" / "results" / "encode.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=2) + "\n")
    print_key_values(row)


if __name__ == "__main__":
    main()
