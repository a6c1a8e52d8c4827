"""End-to-end inference latency against stock diffusers, speed-up by speed-up, in one process.

    python benchmarks/infer_latency.py --model wan14b --steps 40            # Wan2.1 I2V-14B, 480x832, 81 frames
    python benchmarks/infer_latency.py --model cogvideox5b --steps 50 --variants none fastercache
    python benchmarks/infer_latency.py --smoke                              # toy sizes on any machine

The model is built once at its true size with random bf16 weights (as benchmarks/backbones.py builds it).
Stock diffusers (`WanImageToVideoPipeline` / `CogVideoXImageToVideoPipeline`, CFG as two calls) runs first
on the same components, prompt, seed and steps; then this framework without speed-ups and with each
`speedup=` option alone and the presets. Every row: end-to-end seconds (text encode to decoded frames),
DiT seconds per step, VAE decode seconds, peak GPU memory, and fidelity to the stock output: PSNR of the
decoded frames and relative L2 of the final latents. Speed-ups that change weights (fp8) or placement
(lowvram) run last; lowvram runs under a 24 GiB per-process memory cap. Writes
benchmarks/results/infer_<model>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backbones  # noqa: E402
from backbones import NATIVE, PROMPT, ROOT, build, guide_for, timed, warm_up_stages  # noqa: E402

from anisora.accelerators.devices import (  # noqa: E402
    cap_memory,
    peak_memory_gib,
    reset_peak_memory,
    set_attention_backend,
    synchronize,
)
from anisora.backbones.base import Conditioning  # noqa: E402
from anisora.diffusion.sampling import SamplerSpec, sample  # noqa: E402
from anisora.inference.pipeline import offload  # noqa: E402
from anisora.inference.speedups import SpeedupSpec, apply_speedups  # noqa: E402

AUTO = {"attention": "auto"}  # the accelerator group's default kernel choice (conf/accelerator/gpu.yaml)
VARIANTS = {  # name -> speedup fields; the order keeps irreversible changes (fp8, lowvram) last
    "none": {},  # PyTorch's default SDPA kernel, nothing else
    "attention": AUTO,
    "compile": {"compile": True},
    "cache": {"cache": "first_block", "cache_threshold": 0.05},
    "taylorseer": {"cache": "taylorseer"},
    "fastercache": {"cache": "faster"},
    "lossless": {**AUTO, "compile": True},
    "fp8": {"fp8": True},
    "fast": {**AUTO, "compile": True, "cache": "first_block", "cache_threshold": 0.05, "fp8": True},
    "lowvram": {**AUTO, "lowvram": True},
}
LOWVRAM_BUDGET_GIB = 24.0


def sampler_for(backbone, steps: int) -> SamplerSpec:
    if backbone.objective == "v_pred":
        return SamplerSpec(name="cogvideox_dpm", num_steps=steps, guidance_scale=6.0, dynamic_cfg=True)
    return SamplerSpec(name="unipc", num_steps=steps, shift=3.0, guidance_scale=5.0)


def encoders_to(backbone, device: torch.device) -> None:
    for module in backbone.encoders():
        module.to(device)


def run_ours(backbone, g: torch.Tensor, m: torch.Tensor, steps: int, device: torch.device,
             offload_encoders: bool = False) -> dict:
    """One generation through this framework's path (CFG batched). Encoders stay on the GPU as in the stock
    pipeline, except under lowvram, where they go to the CPU before the DiT runs."""
    from anisora.diffusion.v_prediction import sample_v_prediction

    _, _, f, h, w = g.shape
    spec = sampler_for(backbone, steps)
    encoders_to(backbone, device)
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    text = backbone.encode_prompt([PROMPT, ""])
    image = backbone.encode_image(g, m)
    generators = None
    if backbone.objective == "v_pred":  # one generator draws the guide latent, then the noise, as the pipeline
        generators = [torch.Generator("cpu").manual_seed(0)]
        guide = backbone.condition(g, m, generators[0])
    else:
        guide = backbone.condition(g, m)
    if offload_encoders:
        offload(backbone)
    dtype = next(backbone.denoiser.parameters()).dtype
    image = None if image is None else image.to(dtype)
    cond = Conditioning(text=text[:1].to(dtype), guide=guide.to(dtype), image=image)
    uncond = Conditioning(text=text[1:].to(dtype), guide=cond.guide, image=cond.image)
    shape = backbone.latent_shape(f, h, w)
    if backbone.objective == "v_pred":
        latents, dit_s, _ = timed(device, sample_v_prediction, backbone, cond, uncond, shape, [0], spec,
                                  generators=generators)
    else:
        latents, dit_s, _ = timed(device, sample, backbone, cond, uncond, shape, [0], spec)
    decode = {"num_frames": f} if backbone.objective == "v_pred" else {}
    pixels, decode_s, _ = timed(device, backbone.decode_latents, latents, **decode)
    synchronize(device)
    total = time.perf_counter() - start
    frames = ((pixels.float().clamp(-1, 1) + 1) / 2).cpu()
    return {"total_s": total, "dit_step_s": dit_s / steps, "vae_decode_s": decode_s,
            "peak_gib": peak_memory_gib(device), "frames": frames, "latents": latents.float().cpu()}


def run_stock(backbone, g: torch.Tensor, steps: int, device: torch.device) -> dict:
    """diffusers' own pipeline over the same components; the final latents are caught at the last step."""
    from diffusers import CogVideoXImageToVideoPipeline, UniPCMultistepScheduler, WanImageToVideoPipeline

    from anisora.backbones.wan_parts import to_pil_images

    encoders_to(backbone, device)
    _, _, f, h, w = g.shape
    caught: dict = {}

    def catch(pipe, i, t, kwargs):
        caught["latents"] = kwargs["latents"]
        return kwargs

    common = {"image": to_pil_images(g[:, :, 0])[0], "prompt": PROMPT, "height": h, "width": w, "num_frames": f,
              "num_inference_steps": steps, "output_type": "pt", "generator": torch.Generator("cpu").manual_seed(0),
              "callback_on_step_end": catch, "callback_on_step_end_tensor_inputs": ["latents"]}
    if backbone.objective == "v_pred":
        pipe = backbone.stock_pipeline(sampler_for(backbone, steps))
        kwargs = {**common, "guidance_scale": 6.0, "use_dynamic_cfg": True,
                  "max_sequence_length": backbone.prompt_encoder.max_sequence_length}
        assert isinstance(pipe, CogVideoXImageToVideoPipeline)
    else:
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        pipe = WanImageToVideoPipeline(
            tokenizer=backbone.prompt_encoder.tokenizer, text_encoder=backbone.prompt_encoder.encoder,
            image_encoder=backbone.image_encoder.encoder, image_processor=backbone.image_encoder.processor,
            transformer=backbone.denoiser, vae=backbone.codec.vae, scheduler=scheduler)
        kwargs = {**common, "negative_prompt": "", "guidance_scale": 5.0,
                  "max_sequence_length": backbone.prompt_encoder.max_sequence_length}
    pipe.set_progress_bar_config(disable=True)
    out, seconds, peak = timed(device, pipe, **kwargs)
    frames = out.frames.float().cpu().permute(0, 2, 1, 3, 4)  # (B, F, C, H, W) -> (B, C, F, H, W)
    latents = caught["latents"].float().cpu()
    if backbone.objective == "v_pred":
        latents = latents.permute(0, 2, 1, 3, 4)
    return {"total_s": seconds, "peak_gib": peak, "frames": frames, "latents": latents}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 100.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def reset(backbone) -> None:
    """Undo the reversible speed-ups (hooks, compiled blocks) between rows."""
    denoiser = backbone.denoiser
    if getattr(denoiser, "is_cache_enabled", False):
        denoiser.disable_cache()
    for module in denoiser.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    backbone.cfg_uncond_first = False
    denoiser.set_attention_backend("native")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan14b", choices=["wan14b", "cogvideox5b"])
    parser.add_argument("--steps", type=int, default=None, help="default: 40 for Wan, 50 for CogVideoX")
    parser.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS))
    parser.add_argument("--no-stock", action="store_true", help="skip stock diffusers (e.g. a second process for "
                        "lowvram, whose offloading hooks stay on the model)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device: checks this script")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("benchmarks/infer_latency.py needs a CUDA GPU (or --smoke)")
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    steps = args.steps or (50 if args.model == "cogvideox5b" else 40)
    variants = args.variants or [v for v in VARIANTS if v != "fastercache" or args.model == "cogvideox5b"]
    out_path = args.out or ROOT / "benchmarks" / "results" / f"infer_{args.model}.json"
    f, h, w = (9, 64, 64) if args.smoke else NATIVE[args.model]
    backbones.SMOKE["num_layers"] = 2  # (smoke only) First-Block-Cache needs a block after the first
    backbone = build(args.model, device, args.smoke)
    if hasattr(backbone.prompt_encoder, "empty_prompt"):
        backbone.prompt_encoder.empty_prompt = "encode"  # the stock pipeline encodes "" (AniSora V1: zeros)
    g, m = guide_for(f, h, w, device)
    warm_up_stages(backbone, g, m)
    report = {"date": date.today().isoformat(), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "torch": torch.__version__, "model": args.model, "clip": [f, h, w], "steps": steps,
              "command": "python benchmarks/infer_latency.py " + " ".join(sys.argv[1:]), "rows": []}
    stock = None if args.no_stock else run_stock(backbone, g, steps, device)
    if stock is not None:
        report["rows"].append({"variant": "stock diffusers", "total_s": stock["total_s"],
                               "peak_gib": stock["peak_gib"]})
        print(json.dumps(report["rows"][-1]), flush=True)
    plain = None  # this framework's output without speed-ups: what each speed-up's own fidelity is measured against
    for name in variants:
        row: dict = {"variant": name}
        try:
            if name == "lowvram":
                cap_memory(device, LOWVRAM_BUDGET_GIB)
            fields = {**VARIANTS[name], "best_effort": args.smoke}
            row["attention"] = set_attention_backend(backbone.denoiser, fields.pop("attention", None), device,
                                                     torch.bfloat16) or "default"
            if args.smoke and fields.get("compile"):
                fields["compile_backend"] = "aot_eager"
            row["applied"] = apply_speedups(backbone, SpeedupSpec(**fields), device)
            if fields.get("compile"):
                run_ours(backbone, g, m, 1, device)  # compile warm-up, not timed
            ours = run_ours(backbone, g, m, steps, device, offload_encoders=name == "lowvram")
            row.update({k: v for k, v in ours.items() if k not in ("frames", "latents")})
            if stock is not None:
                row["speedup_vs_stock"] = stock["total_s"] / ours["total_s"]
                row["psnr_to_stock_db"] = psnr(ours["frames"], stock["frames"])
                row["latent_rel_l2_to_stock"] = rel_l2(ours["latents"], stock["latents"])
            if name == "none":
                plain = ours
            elif plain is not None:
                row["psnr_to_none_db"] = psnr(ours["frames"], plain["frames"])
                row["latent_rel_l2_to_none"] = rel_l2(ours["latents"], plain["latents"])
        except Exception as ex:  # one variant's failure (out of memory, missing kernel) still reports the rest
            row["error"] = f"{type(ex).__name__}: {ex}".splitlines()[0][:300]
        reset(backbone)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{args.model} {f}x{h}x{w}, {steps} steps, {report['device']}")
    print("| variant | total s | vs stock | DiT s/step | VAE decode s | peak GiB | PSNR to stock dB | latent rel L2 "
          "| PSNR to none dB | latent rel L2 to none |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in report["rows"]:
        if "error" in row:
            print(f"| {row['variant']} | failed: {row['error']} |")
            continue
        cells = [f"{row['total_s']:.1f}", f"{row.get('speedup_vs_stock', 1.0):.2f}x",
                 f"{row.get('dit_step_s', float('nan')):.2f}", f"{row.get('vae_decode_s', float('nan')):.2f}",
                 f"{row['peak_gib']:.1f}", f"{row.get('psnr_to_stock_db', float('nan')):.1f}",
                 f"{row.get('latent_rel_l2_to_stock', float('nan')):.4f}",
                 f"{row.get('psnr_to_none_db', float('nan')):.1f}",
                 f"{row.get('latent_rel_l2_to_none', float('nan')):.4f}"]
        print(f"| {row['variant']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
