"""Real-size backbones on one GPU: random bf16 weights, native clip size, 2 sampling steps.

    python benchmarks/backbones.py [--models wan1.3b wan14b cogvideox5b] [--steps 2] [--stock]

For each model: build it at its true size (random weights; the tokenizer is word-level, which does
not change the cost of the encoders), then time each stage of one generation: text encode (prompt and
negative prompt), image encode (CLIP, Wan I2V), VAE encode of the guide, the DiT per sampling step
(classifier-free guidance: two passes), VAE decode (tiled); and the peak GPU memory of each stage
and overall. The text and image encoders are moved to the CPU before the DiT runs, as infer.py does.
With --stock, diffusers' own pipeline runs the same components for the same steps, and the table
gives its wall time next to ours. Prints a table and writes benchmarks/results/backbones.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anisora.accelerators.devices import empty_cache, peak_memory_gib, reset_peak_memory, synchronize  # noqa: E402
from anisora.diffusion.sampling import sample  # noqa: E402
from anisora.inference.pipeline import offload  # noqa: E402
from benchmarks.gpu import benchmark_device, device_name  # noqa: E402

PROMPT = "a red-haired girl turns her head and smiles, cherry blossoms fall. aesthetic score: 5.5. motion score: 2.0."
NATIVE = {  # frames, height, width
    "wan1.3b": (81, 480, 832),
    "wan14b": (81, 480, 832),
    "cogvideox5b": (49, 480, 720),
}


@contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


SMOKE = {"num_layers": 1, "text_layers": 1, "clip_layers": 1, "vae_base_dim": 8, "text_heads": 4, "text_dim": 64,
         "text_ff": 64, "text_vocab": 64, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 32,
         "image_dim": 32, "added_kv_proj_dim": 32, "clip_heads": 2, "clip_ff": 32, "max_sequence_length": 16,
         "text_embed_dim": 64,
         "time_embed_dim": 32, "max_text_seq_length": 16, "sample_height": 8, "sample_width": 8, "sample_frames": 9,
         "text_kv": 8, "vae_block_out_channels": [8, 8, 8, 8], "vae_layers_per_block": 1, "vae_norm_num_groups": 2}


def weights_dtype(device: torch.device, smoke: bool) -> torch.dtype:
    """bf16, as the models run on accelerators; a smoke run on the CPU takes fp32, since bf16 convolutions on
    CPUs without bf16 instructions (AVX2-only hosts) take minutes where fp32 takes seconds."""
    return torch.float32 if smoke and device.type == "cpu" else torch.bfloat16


def build(name: str, device: torch.device, smoke: bool = False):
    """Random weights, created directly on the GPU in bf16 (Wan's VAE in fp32; CogVideoX's as its config says)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    model = OmegaConf.to_container(cfg.get("model", cfg))
    if smoke:  # the same code path at toy sizes, to check this script on a CPU
        model.update({k: v for k, v in SMOKE.items() if k in model and model[k] is not None})
    dtype = weights_dtype(device, smoke)
    with torch.device(device), default_dtype(dtype):
        if name.startswith("wan"):
            from anisora.backbones.wan_loading import WanSpec, build_random_wan

            keys = WanSpec.__dataclass_fields__
            backbone = build_random_wan(WanSpec(**{k: v for k, v in model.items() if k in keys}))
            backbone.codec.vae.float()
        else:
            from anisora.backbones.cogvideox import build as build_cogvideox

            skip = ("kind", "init", "objective", "native", "offload_encoders", "lora", "defaults", "_target_", "ckpt")
            backbone = build_cogvideox(dtype=dtype, **{k: v for k, v in model.items() if k not in skip})
    return backbone.eval()


def timed(device: torch.device, fn, *args, **kwargs):
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    synchronize(device)
    return out, time.perf_counter() - start, peak_memory_gib(device)


def guide_for(frames: int, height: int, width: int, device: torch.device):
    """A random first frame on 8-bit levels (so the PIL image a stock pipeline takes holds exactly these
    values) and its i2v mask."""
    g = torch.zeros(1, 3, frames, height, width, device=device)
    levels = torch.randint(0, 256, (1, 3, height, width), device=device)
    g[:, :, 0] = levels.float() / 255 * 2 - 1
    m = torch.zeros(1, frames, height, width, device=device)
    m[:, 0] = 1
    return g, m


def parameters(backbone) -> dict[str, float]:
    parts = {"dit": backbone.denoiser}
    for name in ("prompt_encoder", "image_encoder", "codec", "vae"):
        module = getattr(backbone, name, None)
        if isinstance(module, torch.nn.Module):
            parts[name] = module
    return {k: sum(p.numel() for p in m.parameters()) / 1e9 for k, m in parts.items()}


@torch.no_grad()
def warm_up_stages(backbone, g: torch.Tensor, m: torch.Tensor) -> None:
    """One untimed pass of every encode/decode stage, so that neither our timings (taken first) nor the stock
    pipeline's (taken after) pay for lazy kernel loading."""
    _, _, f, h, w = g.shape
    backbone.encode_prompt([PROMPT, ""])
    backbone.encode_image(g, m)
    backbone.condition(g, m)
    latents = torch.zeros(1, *backbone.latent_shape(f, h, w), device=g.device,
                          dtype=next(backbone.denoiser.parameters()).dtype)
    backbone.decode_latents(latents)


def run_model(name: str, steps: int, device: torch.device, stock: bool = False, smoke: bool = False) -> dict:
    from anisora.backbones.base import Conditioning

    f, h, w = (9, 64, 64) if smoke else NATIVE[name]
    backbone, build_s, _ = timed(device, build, name, device, smoke)
    row: dict = {"model": name, "frames": f, "height": h, "width": w, "steps": steps, "build_s": build_s,
                 "params_b": parameters(backbone)}
    g, m = guide_for(f, h, w, device)
    warm_up_stages(backbone, g, m)
    text, row["text_encode_s"], row["text_encode_peak_gib"] = timed(
        device, backbone.encode_prompt, [PROMPT, ""])
    image, row["image_encode_s"], row["image_encode_peak_gib"] = timed(device, backbone.encode_image, g, m)
    guide, row["vae_encode_s"], row["vae_encode_peak_gib"] = timed(device, backbone.condition, g, m)
    offload(backbone)
    dtype = next(backbone.denoiser.parameters()).dtype
    image = None if image is None else image.to(dtype)
    cond = Conditioning(text=text[:1].to(dtype), guide=guide.to(dtype), image=image)
    uncond = Conditioning(text=text[1:].to(dtype), guide=cond.guide, image=cond.image)
    shape = backbone.latent_shape(f, h, w)
    spec, warm = backbone.stock_sampler(steps), backbone.stock_sampler(1)
    sampler = sample
    sampler(backbone, cond, uncond, shape, [0], warm)  # warm-up
    latents, dit_s, row["dit_peak_gib"] = timed(device, sampler, backbone, cond, uncond, shape, [0], spec)
    row["dit_step_s"] = dit_s / steps
    decode = {"num_frames": f}
    _, row["vae_decode_s"], row["vae_decode_peak_gib"] = timed(device, backbone.decode_latents, latents, **decode)
    row["peak_gib"] = max(v for k, v in row.items() if k.endswith("_peak_gib"))
    stages = ("text_encode_s", "image_encode_s", "vae_encode_s", "vae_decode_s")
    row["total_s"] = sum(row[k] for k in stages) + dit_s
    del cond, uncond, latents, guide, text, image
    empty_cache()
    if stock:
        run_stock = run_stock_wan if name.startswith("wan") else run_stock_cogvideox
        row.update(run_stock(backbone, g, steps, device))
        row["stock_over_ours"] = row["stock_total_s"] / row["total_s"]
    del backbone
    empty_cache()
    return row


def run_stock_cogvideox(backbone, guide: torch.Tensor, steps: int, device: torch.device) -> dict:
    """The same components through diffusers' `CogVideoXImageToVideoPipeline` (DPM, dynamic CFG 6)."""
    from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline

    from anisora.backbones.wan_parts import to_pil_images
    from anisora.diffusion.v_prediction import DEFAULT_SCHEDULE

    for module in backbone.encoders():
        module.to(device)
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=backbone.prompt_encoder.tokenizer, text_encoder=backbone.prompt_encoder.encoder,
        vae=backbone.codec.vae, transformer=backbone.denoiser,
        scheduler=CogVideoXDPMScheduler(**DEFAULT_SCHEDULE.scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    _, _, f, h, w = guide.shape
    _, seconds, peak = timed(device, pipe, image=to_pil_images(guide[:, :, 0])[0], prompt=PROMPT, height=h, width=w,
                             num_frames=f, num_inference_steps=steps, guidance_scale=6.0, use_dynamic_cfg=True,
                             max_sequence_length=backbone.prompt_encoder.max_sequence_length, output_type="np",
                             generator=torch.Generator("cpu").manual_seed(0))
    return {"stock_total_s": seconds, "stock_peak_gib": peak}


def run_stock_wan(backbone, guide: torch.Tensor, steps: int, device: torch.device) -> dict:
    """The same components through diffusers' own Wan pipeline (encoders stay on the GPU there)."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    from anisora.backbones.wan_parts import to_pil_images

    for module in backbone.encoders():
        module.to(device)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    parts = {"tokenizer": backbone.prompt_encoder.tokenizer, "text_encoder": backbone.prompt_encoder.encoder,
             "transformer": backbone.denoiser, "vae": backbone.codec.vae, "scheduler": scheduler}
    _, _, f, h, w = guide.shape
    kwargs = {"prompt": PROMPT, "negative_prompt": "", "height": h, "width": w, "num_frames": f,
              "num_inference_steps": steps, "guidance_scale": 5.0, "output_type": "np",
              "generator": torch.Generator("cpu").manual_seed(0)}
    if backbone.image_encoder is not None:
        pipe = WanImageToVideoPipeline(image_encoder=backbone.image_encoder.encoder,
                                       image_processor=backbone.image_encoder.processor, **parts)
        kwargs["image"] = to_pil_images(guide[:, :, 0])[0]
    else:
        pipe = WanPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    _, seconds, peak = timed(device, pipe, **kwargs)
    return {"stock_total_s": seconds, "stock_peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(NATIVE), choices=list(NATIVE))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--stock", action="store_true", help="also time diffusers' own Wan pipelines")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device: checks this script")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "backbones.json")
    args = parser.parse_args()
    device = benchmark_device("benchmarks/backbones.py", args.smoke)
    report = {"date": date.today().isoformat(), "device": device_name(device),
              "torch": torch.__version__, "command": "python benchmarks/backbones.py " + " ".join(sys.argv[1:]),
              "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model_name in args.models:
        try:
            row = run_model(model_name, args.steps, device, args.stock, args.smoke)
        except Exception as ex:  # one model's failure (e.g. out of memory) still reports the others
            row = {"model": model_name, "error": f"{type(ex).__name__}: {ex}".splitlines()[0]}
            empty_cache()
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    cols = ["text_encode_s", "image_encode_s", "vae_encode_s", "dit_step_s", "vae_decode_s", "total_s", "peak_gib"]
    print("\n| model | clip | DiT params (B) | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for row in report["rows"]:
        if "error" in row:
            print(f"| {row['model']} | failed: {row['error']} |")
            continue
        clip = f"{row['frames']}x{row['height']}x{row['width']}"
        stock = f" stock {row['stock_total_s']:.1f} s, x{row['stock_over_ours']:.2f}" if "stock_total_s" in row else ""
        print(f"| {row['model']} | {clip} | {row['params_b']['dit']:.2f} | "
              + " | ".join(f"{row[c]:.2f}" for c in cols) + f" |{stock}")


if __name__ == "__main__":
    main()
