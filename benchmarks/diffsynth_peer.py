"""DiffSynth-Studio's Wan training step and sampling step, to set beside train_throughput.py's and infer_latency.py's.

    python benchmarks/diffsynth_peer.py --runs wan1.3b_full wan14b_lora   # one GPU, 480 x 832, 81 frames
    python benchmarks/diffsynth_peer.py --runs --infer-step               # its I2V-14B sampling step with CFG
    python benchmarks/diffsynth_peer.py --smoke                           # a tiny DiT on any device

Its own code does the step: `diffsynth.models.wan_video_dit.WanModel` with the configuration its model table gives
the checkpoint, `FlowMatchSFTLoss` (its training timesteps and weights) over `model_fn_wan_video` with gradient
checkpointing on (its train.py forces it on), AdamW over the trainable weights. Full fine-tunes train the bf16
weights (its `torch_dtype`); LoRA uses its own `add_lora_to_model` with its default targets `q,k,v,o,ffn.0,ffn.2`.
The inputs are what its split training caches: latents, text embeddings and, for image-to-video, CLIP image
features and the guide channels (random: speed and memory only; its VAE and encoders do not run, as in ours). Run it
in a process of its own: DiffSynth's package import pulls torchvision, imageio and modelscope. `--infer-step` also
times one sampling step of its I2V-14B DiT with CFG as its pipeline runs it (its exact setting, against
infer_latency.py's DiT s/step). Writes benchmarks/results/diffsynth_peer.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from importlib import metadata
from pathlib import Path

import torch
from gpu import benchmark_device, device_name  # benchmarks/, the script's own folder
from report import error_line  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]

#: DiffSynth's WanModel configurations (diffsynth/configs/model_configs.py) for Wan2.1 T2V-1.3B and I2V-14B
DITS = {
    "t2v_1.3b": dict(has_image_input=False, patch_size=(1, 2, 2), in_dim=16, dim=1536, ffn_dim=8960, freq_dim=256,
                     text_dim=4096, out_dim=16, num_heads=12, num_layers=30, eps=1e-6),
    "i2v_14b": dict(has_image_input=True, patch_size=(1, 2, 2), in_dim=36, dim=5120, ffn_dim=13824, freq_dim=256,
                    text_dim=4096, out_dim=16, num_heads=40, num_layers=40, eps=1e-6),
}
SMOKE = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32)
#: run -> (DiT, LoRA rank or None for a full fine-tune); the names match train_throughput.py's rows
RUNS = {"wan1.3b_full": ("t2v_1.3b", None), "wan1.3b_lora": ("t2v_1.3b", 32), "wan14b_lora": ("i2v_14b", 32)}
LORA_TARGETS = "q,k,v,o,ffn.0,ffn.2"


def step_inputs(config: dict, frames: int, height: int, width: int, device: torch.device) -> dict:
    """What DiffSynth's split training caches for one clip: latents, text embeddings, and for I2V the CLIP image
    features and the guide channels (mask 4 + guide latent 16)."""
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    bf16 = dict(device=device, dtype=torch.bfloat16)
    inputs = {"input_latents": torch.randn(latent, **bf16), "context": torch.randn(1, 512, config["text_dim"], **bf16),
              "use_gradient_checkpointing": True, "use_gradient_checkpointing_offload": False}
    if config["has_image_input"]:
        inputs["clip_feature"] = torch.randn(1, 257, 1280, **bf16)
        inputs["y"] = torch.randn(1, config["in_dim"] - 16, *latent[2:], **bf16)
    return inputs


def run(name: str, steps: int, warmup: int, cap_gib: float, size: tuple[int, int, int], device: torch.device,
        smoke: bool) -> dict:
    from diffsynth.diffusion.loss import FlowMatchSFTLoss
    from diffsynth.diffusion.training_module import DiffusionTrainingModule
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.pipelines.wan_video import WanVideoPipeline

    dit_name, rank = RUNS[name]
    config = {**DITS[dit_name], **(SMOKE if smoke else {})}
    torch.manual_seed(0)
    pipe = WanVideoPipeline(device=str(device), torch_dtype=torch.bfloat16)
    with torch.device(device):
        pipe.dit = WanModel(**config).to(dtype=torch.bfloat16)
    pipe.scheduler.set_timesteps(1000, training=True)
    if rank is None:
        pipe.dit.requires_grad_(True)
    else:
        pipe.dit.requires_grad_(False)
        pipe.dit = DiffusionTrainingModule.add_lora_to_model(None, pipe.dit, LORA_TARGETS.split(","), rank)
    trainable = [p for p in pipe.dit.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    inputs = step_inputs(config, *size, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        if cap_gib:
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / torch.cuda.mem_get_info(device)[1]))
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        loss = FlowMatchSFTLoss(pipe, **dict(inputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"run": name, "dit": dit_name, "lora_rank": rank, "lora_targets": LORA_TARGETS if rank else None,
            "step_s": seconds, "peak_gib": peak, "timed_steps": steps, "loss": losses[-1],
            "trainable_params_b": sum(p.numel() for p in trainable) / 1e9,
            "settings": "bf16 weights, gradient checkpointing, AdamW lr 1e-5, FlowMatchSFTLoss"}


@torch.no_grad()
def inference_step(steps: int, size: tuple[int, int, int], device: torch.device, smoke: bool) -> dict:
    """Seconds of one sampling step of its Wan2.1 I2V-14B DiT with CFG as its pipeline runs it by default (two
    `model_fn_wan_video` calls, prompt and negative prompt; `cfg_merge=False`), no cache: its exact setting."""
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.pipelines.wan_video import model_fn_wan_video

    config = {**DITS["i2v_14b"], **(SMOKE if smoke else {})}
    torch.manual_seed(0)
    with torch.device(device):
        dit = WanModel(**config).to(dtype=torch.bfloat16).eval()
    inputs = step_inputs(config, *size, device)
    latents = inputs.pop("input_latents")
    for key in ("use_gradient_checkpointing", "use_gradient_checkpointing_offload"):
        inputs.pop(key)
    negative = torch.randn_like(inputs["context"])
    timestep = torch.tensor([500.0], device=device, dtype=torch.bfloat16)

    def step() -> None:
        for context in (inputs["context"], negative):
            model_fn_wan_video(dit=dit, latents=latents, timestep=timestep, **{**inputs, "context": context})

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"run": "wan14b_i2v_dit_step", "dit_step_s": (time.perf_counter() - start) / steps, "peak_gib": peak,
            "settings": "bf16, CFG as two calls (its default cfg_merge=False), no cache, its attention dispatch"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=["wan1.3b_full", "wan14b_lora"], choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-cap-gib", type=float, default=79.0, help="as train_throughput.py; 0: the device")
    parser.add_argument("--size", type=int, nargs=3, default=[81, 480, 832], metavar=("FRAMES", "HEIGHT", "WIDTH"))
    parser.add_argument("--infer-step", action="store_true",
                        help="also time one I2V-14B sampling step with CFG (its exact inference setting)")
    parser.add_argument("--smoke", action="store_true", help="a tiny DiT at a tiny size on any device")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "diffsynth_peer.json")
    args = parser.parse_args()
    device = benchmark_device("benchmarks/diffsynth_peer.py", args.smoke)
    size = (5, 32, 32) if args.smoke else tuple(args.size)
    report = {"date": date.today().isoformat(), "device": device_name(device), "torch": torch.__version__,
              "peer_version": f"diffsynth {metadata.version('diffsynth')}", "clip": list(size),
              "memory_cap_gib": args.memory_cap_gib,
              "command": "python benchmarks/diffsynth_peer.py " + " ".join(sys.argv[1:]), "rows": []}
    for name in args.runs:
        try:
            row = run(name, args.steps, args.warmup, args.memory_cap_gib, size, device, args.smoke)
        except Exception as ex:  # out of memory in one run still reports the others
            row = {"run": name, "error": error_line(ex)}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.infer_step:
        try:
            row = inference_step(args.steps, size, device, args.smoke)
        except Exception as ex:
            row = {"run": "wan14b_i2v_dit_step", "error": error_line(ex)}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
