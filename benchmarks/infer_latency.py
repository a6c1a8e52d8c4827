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

    torchrun --nproc-per-node 2 benchmarks/infer_latency.py --context-parallel 2 --variants lossless

splits each variant's video over the launch's GPUs (Ulysses); rank 0 reports. `--save-latents DIR` keeps each
row's final latents, `--reference NAME=FILE` measures every row's fidelity to latents another run saved (decoded
here), and `--merge A.json B.json` joins the rows of runs made side by side (stock on one GPU, the variants on
another: the same seeded weights, printed as a checksum) into one table with speed-ups against stock and, for
context-parallel rows, against the same variant on one GPU (`--latents DIR`: the runs' saved latents, brought
from the device machine). `--check-inputs` compares the first DiT call of the
stock pipeline and of this framework, input by input, and exits.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backbones  # noqa: E402
from backbones import NATIVE, PROMPT, ROOT, build, guide_for, timed, warm_up_stages  # noqa: E402
from gpu import benchmark_device, device_name  # noqa: E402
from report import error_line  # noqa: E402

from anisora.accelerators.devices import (  # noqa: E402
    cap_memory,
    local_device,
    peak_memory_gib,
    reset_peak_memory,
    resolve_device,
    set_attention_backend,
    synchronize,
)
from anisora.backbones.base import Conditioning  # noqa: E402
from anisora.diffusion.sampling import SamplerSpec, sample  # noqa: E402
from anisora.inference.pipeline import offload  # noqa: E402
from anisora.inference.speedups import SpeedupSpec, apply_speedups  # noqa: E402
from anisora.inference.speedups.compile import uncompile_blocks  # noqa: E402

AUTO = {"attention": "auto"}  # the accelerator group's default kernel choice (conf/accelerator/gpu.yaml)
VARIANTS = {  # name -> speedup fields; the order keeps irreversible changes (fp8, lowvram) last
    "none": {},  # PyTorch's default SDPA kernel, nothing else
    "attention": AUTO,
    "compile": {"compile": True},
    "cache": {"cache": "first_block", "cache_threshold": 0.05},
    "taylorseer": {"cache": "taylorseer"},
    "taylorseer_lite": {"cache": "taylorseer_lite"},
    "fastercache": {"cache": "faster"},
    "lossless": {**AUTO, "compile": True},
    "fp8": {"fp8": True},
    "fast": {**AUTO, "compile": True, "cache": "first_block", "cache_threshold": 0.05, "fp8": True},
    "fast_cache0.1": {**AUTO, "compile": True, "cache": "first_block", "cache_threshold": 0.1, "fp8": True},
    "fast_taylorseer": {**AUTO, "cache": "taylorseer", "fp8": True},  # (block outputs: > 139 GiB on Wan-14B)
    "lowvram": {**AUTO, "lowvram": True},
    # a 4-step distilled student (conf/sampler/few_step_4.yaml: its exact grid, guidance 1, no uncond pass)
    "student4_lossless": {**AUTO, "compile": True},
    "student4_fp8": {**AUTO, "compile": True, "fp8": True},
}
LOWVRAM_BUDGET_GIB = 24.0
STOCK = "stock diffusers"  # the row of diffusers' own pipeline


def variant_spec(name: str, smoke: bool = False) -> tuple[str | None, SpeedupSpec]:
    """A variant's attention kernel and its speed-ups; a smoke run compiles with aot_eager (no C compiler needed)
    and lets a speed-up the CPU lacks fall back instead of failing."""
    fields = {**VARIANTS[name], "best_effort": smoke}
    attention = fields.pop("attention", None)
    if smoke and fields.get("compile"):
        fields["compile_backend"] = "aot_eager"
    return attention, SpeedupSpec(**fields)


def check_variants(variants: list[str], device: torch.device) -> None:
    """Stop in one line, before the weights are built, when a requested variant cannot run here (a missing
    package such as torchao, a GPU without float8): a ten-minute run should not find out at its last row."""
    from anisora.inference.speedups.apply import problems

    for name in variants:
        found = problems(variant_spec(name)[1], device)
        if found:
            key, why = found[0]
            sys.exit(f"--variants {name}: {key} {why}")


def sampler_for(backbone, steps: int) -> SamplerSpec:
    return backbone.stock_sampler(steps)


def encoders_to(backbone, device: torch.device) -> None:
    for module in backbone.encoders():
        module.to(device)


def student_sampler() -> SamplerSpec:
    """The few-step students' sampler, as `sampler=few_step_4` composes it."""
    from omegaconf import OmegaConf

    return SamplerSpec(**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "sampler" / "few_step_4.yaml")))


def run_ours(backbone, g: torch.Tensor, m: torch.Tensor, steps: int, device: torch.device,
             offload_encoders: bool = False, spec: SamplerSpec | None = None) -> dict:
    """One generation through this framework's path (CFG batched). Encoders stay on the GPU as in the stock
    pipeline, except under lowvram, where they go to the CPU before the DiT runs."""
    _, _, f, h, w = g.shape
    spec = spec or sampler_for(backbone, steps)
    steps = spec.num_steps
    encoders_to(backbone, device)
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    text = backbone.encode_prompt([PROMPT, ""])
    image = backbone.encode_image(g, m)
    generators = [torch.Generator("cpu").manual_seed(0)]  # the guide latent (where drawn), then the noise
    guide = backbone.condition(g, m, generators[0])
    if offload_encoders:
        offload(backbone)
    dtype = next(backbone.denoiser.parameters()).dtype
    image = None if image is None else image.to(dtype)
    cond = Conditioning(text=text[:1].to(dtype), guide=guide.to(dtype), image=image)
    uncond = Conditioning(text=text[1:].to(dtype), guide=cond.guide, image=cond.image)
    shape = backbone.latent_shape(f, h, w)
    latents, dit_s, _ = timed(device, sample, backbone, cond, uncond, shape, [0], spec, generators=generators)
    pixels, decode_s, _ = timed(device, decode_pixels, backbone, latents, f)
    synchronize(device)
    total = time.perf_counter() - start
    return {"total_s": total, "dit_step_s": dit_s / steps, "vae_decode_s": decode_s,
            "peak_gib": peak_memory_gib(device), "frames": unit_frames(pixels), "latents": latents.float().cpu()}


def decode_pixels(backbone, latents: torch.Tensor, frames: int) -> torch.Tensor:
    """Latents -> pixels in [-1, 1] (CogVideoX drops the latent frames a clip of `frames` does not need)."""
    return backbone.decode_latents(latents, num_frames=frames)


def unit_frames(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> frames in [0, 1] on the CPU, as the stock pipelines' `output_type="pt"` gives them."""
    return ((pixels.float().clamp(-1, 1) + 1) / 2).cpu()


#: peers on the stock pipeline: cache-dit's recommended Hopper settings for Wan (its examples/configs/hopper/cache.yaml
#: and quantize.yaml: DBCache F1B0, threshold 0.12, 8 warm-up steps at interval 2, at most 2 cached steps in a row,
#: first-order TaylorSeer; + torchao float8 per-row linears), on diffusers' default attention
CACHE_DIT = {"max_warmup_steps": 8, "warmup_interval": 2, "max_cached_steps": -1, "max_continuous_cached_steps": 2,
             "Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.12,
             "enable_taylorseer": True, "taylorseer_order": 1}
PEERS = {"cache_dit": {"cache_config": CACHE_DIT},
         "cache_dit_fp8": {"cache_config": CACHE_DIT, "quantize_config": {"quant_type": "float8_per_row"}}}


def cache_dit_hooks(settings: dict):
    """(prepare, undo) for run_stock: cache-dit's hooks on the pipeline (with its quantization, if `settings`
    asks for it, which stays: undo is None then), and cache-dit's version."""
    import cache_dit

    def prepare(pipe) -> None:
        cache_dit.enable_cache(pipe, **cache_dit.load_configs(settings))

    undo = None if "quantize_config" in settings else cache_dit.disable_cache
    return prepare, undo, cache_dit.__version__


def dit_timer(module: torch.nn.Module, device: torch.device):
    """CUDA events around every forward of `module`: its own seconds, summed after the run (no sync inside it)."""
    events: list = []
    if device.type != "cuda":
        return events, []

    def before(mod, args, kwargs):
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        events.append([start, None])

    def after(mod, args, kwargs, output):
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        events[-1][1] = end

    handles = [module.register_forward_pre_hook(before, with_kwargs=True),
               module.register_forward_hook(after, with_kwargs=True)]
    return events, handles


def run_stock(backbone, g: torch.Tensor, steps: int, device: torch.device, prepare=None, undo=None) -> dict:
    """diffusers' own pipeline over the same components (a peer's `prepare` applied before, `undo` after); the
    final latents are caught at the last step, and the DiT's own time per step is summed from CUDA events."""
    from diffusers import CogVideoXImageToVideoPipeline, UniPCMultistepScheduler, WanImageToVideoPipeline

    from anisora.backbones.cogvideox import CogVideoXI2VBackbone
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
    if isinstance(backbone, CogVideoXI2VBackbone):
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
    if prepare is not None:
        prepare(pipe)
    events, handles = dit_timer(pipe.transformer, device)
    try:
        out, seconds, peak = timed(device, pipe, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        if undo is not None:
            undo(pipe)
    frames = out.frames.float().cpu().permute(0, 2, 1, 3, 4)  # (B, F, C, H, W) -> (B, C, F, H, W)
    latents = caught["latents"].float().cpu()
    if backbone.dit_layout == "BTCHW":
        latents = latents.permute(0, 2, 1, 3, 4)
    row = {"total_s": seconds, "peak_gib": peak, "frames": frames, "latents": latents}
    if events:
        row["dit_s"] = sum(a.elapsed_time(b) for a, b in events) / 1000
        row["dit_calls"] = len(events)
        row["dit_step_s"] = row["dit_s"] / steps
    return row


def stock_row(stock: dict) -> dict:
    """The results row of a `run_stock` output: its timings, no tensors."""
    return {"variant": STOCK, **{k: stock[k] for k in ("total_s", "peak_gib", "dit_s", "dit_calls", "dit_step_s")
                                 if k in stock}}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 100.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def fidelity(ours: dict, ref: dict, label: str) -> dict[str, float]:
    """PSNR of decoded frames and relative L2 of final latents against another output; latents alone (no
    frames on one side: a run whose decoded frames were too large to bring back) give the latent figure only."""
    result = {f"latent_rel_l2_to_{label}": rel_l2(ours["latents"], ref["latents"])}
    if ours.get("frames") is not None and ref.get("frames") is not None:
        result[f"psnr_to_{label}_db"] = psnr(ours["frames"], ref["frames"])
    return result


def decoded(backbone, latents: torch.Tensor, frames: int, device: torch.device) -> dict:
    """An output from latents saved by another run, decoded by this run's VAE."""
    dtype = next(backbone.codec.parameters()).dtype
    with torch.no_grad():
        pixels = decode_pixels(backbone, latents.to(device, dtype), frames)
    return {"latents": latents.float().cpu(), "frames": unit_frames(pixels)}


def weights_checksum(module: torch.nn.Module) -> float:
    """A float that identifies the random weights, so runs in separate processes can show they share them."""
    return float(sum(p.detach().float().abs().sum() for p in module.parameters()))


def reset(backbone) -> None:
    """Undo the reversible speed-ups (hooks, compiled blocks) between rows."""
    denoiser = backbone.denoiser
    if getattr(denoiser, "is_cache_enabled", False):
        denoiser.disable_cache()
    uncompile_blocks(denoiser)
    backbone.cfg_uncond_first = False
    denoiser.set_attention_backend("native")


def check_inputs(backbone, g: torch.Tensor, m: torch.Tensor, device: torch.device) -> None:
    """One step of the stock pipeline and of this framework, each stopped at its first DiT call: the relative
    difference of every input (and, for the hidden states, of each channel that differs), then of the outputs."""
    calls: list[tuple[dict, torch.Tensor]] = []

    class FirstCall(Exception):
        pass

    def grab(module, args, kwargs, output):
        calls.append(({k: v for k, v in kwargs.items()}, output[0] if isinstance(output, tuple) else output))
        raise FirstCall

    handle = backbone.denoiser.register_forward_hook(grab, with_kwargs=True)
    for run in (lambda: run_stock(backbone, g, 1, device), lambda: run_ours(backbone, g, m, 1, device)):
        try:
            run()
        except FirstCall:
            pass
    handle.remove()
    (stock_in, stock_out), (ours_in, ours_out) = calls
    half = slice(None)  # Wan's stock pipeline calls the DiT once per CFG branch (conditional first); ours batches
    if stock_out.shape[0] < ours_out.shape[0]:
        halves = [slice(i, i + stock_out.shape[0]) for i in range(0, ours_out.shape[0], stock_out.shape[0])]
        half = min(halves, key=lambda h: rel_l2(ours_in["hidden_states"][h].float(), stock_in["hidden_states"].float())
                   + rel_l2(ours_in["encoder_hidden_states"][h].float(), stock_in["encoder_hidden_states"].float()))
        print(f"stock's first DiT call is compared with batch rows {half.start}:{half.stop} of ours")
        ours_out = ours_out[half]
    for key, a in stock_in.items():
        b = ours_in.get(key)
        if isinstance(b, torch.Tensor) and isinstance(a, torch.Tensor) and b.shape[0] != a.shape[0]:
            b = b[half]
        if isinstance(a, tuple):
            for i, (x, y) in enumerate(zip(a, b)):
                print(f"{key}[{i}]  rel {rel_l2(y.float(), x.float()):.3g}")
        elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
            print(f"{key}  {tuple(a.shape)} {a.dtype} vs {b.dtype}  rel {rel_l2(b.float(), a.float()):.3g}")
            if key == "hidden_states":
                channel_dim = backbone.dit_layout.index("C")
                x, y = a.float().movedim(channel_dim, 0), b.float().movedim(channel_dim, 0)
                rels = [rel_l2(y[c], x[c]) for c in range(x.shape[0])]
                print("  channels that differ (rel > 1e-3):", {c: round(r, 4) for c, r in enumerate(rels) if r > 1e-3})
        else:
            print(f"{key}  stock {a if not isinstance(a, torch.Tensor) else tuple(a.shape)}  ours "
                  f"{b if not isinstance(b, torch.Tensor) else tuple(b.shape)}")
    print(f"output  rel {rel_l2(ours_out.float(), stock_out.float()):.3g}")
    with torch.no_grad():
        again = backbone.denoiser(**stock_in)
    again = again[0] if isinstance(again, tuple) else again.sample
    print(f"ours on stock's inputs vs stock output  rel {rel_l2(again.float(), stock_out.float()):.3g}")


def print_table(report: dict) -> None:
    f, h, w = report["clip"]
    print(f"\n{report['model']} {f}x{h}x{w}, {report['steps']} steps, {report['device']}")
    refs = sorted({k[len("psnr_to_"):-len("_db")] for row in report["rows"] for k in row
                   if k.startswith("psnr_to_") and k not in ("psnr_to_stock_db", "psnr_to_none_db")})
    extra = "".join(f" | PSNR to {r} dB" for r in refs)
    print("| variant | total s | vs stock | vs one GPU | DiT s/step | VAE decode s | peak GiB | PSNR to stock dB "
          f"| latent rel L2 | PSNR to none dB | latent rel L2 to none{extra} |")
    print("|---" * (11 + len(refs)) + "|")
    for row in report["rows"]:
        if "error" in row:
            print(f"| {row['variant']} | failed: {row['error']} |")
            continue
        vs_stock = row.get("speedup_vs_stock", 1.0 if row["variant"] == STOCK else float("nan"))
        cells = [f"{row['total_s']:.1f}", f"{vs_stock:.2f}x",
                 f"{row['speedup_vs_one_gpu']:.2f}x" if "speedup_vs_one_gpu" in row else "",
                 f"{row.get('dit_step_s', float('nan')):.2f}", f"{row.get('vae_decode_s', float('nan')):.2f}",
                 f"{row['peak_gib']:.1f}", f"{row.get('psnr_to_stock_db', float('nan')):.1f}",
                 f"{row.get('latent_rel_l2_to_stock', float('nan')):.4f}",
                 f"{row.get('psnr_to_none_db', float('nan')):.1f}",
                 f"{row.get('latent_rel_l2_to_none', float('nan')):.4f}"]
        cells += [f"{row.get(f'psnr_to_{r}_db', float('nan')):.1f}" for r in refs]
        print(f"| {row['variant']} | " + " | ".join(cells) + " |")


def add_ratios(report: dict) -> None:
    """Speed-up of every row over the stock row, and of a context-parallel row over its one-GPU variant."""
    rows = {row["variant"]: row for row in report["rows"] if "total_s" in row}
    stock = rows.get(STOCK)
    for name, row in rows.items():
        if stock is not None and row is not stock:
            row["speedup_vs_stock"] = stock["total_s"] / row["total_s"]
        single = rows.get(name.split("+cp")[0]) if "+cp" in name else None
        if single is not None:
            row["speedup_vs_one_gpu"] = single["total_s"] / row["total_s"]


def stem(variant: str) -> str:
    return "stock" if variant == STOCK else variant.replace(" ", "_")


def save_output(output: dict, folder: Path, variant: str) -> None:
    """Final latents (float32, `<variant>.pt`, what --reference reads) and decoded frames (float16,
    `<variant>.frames.pt`, what --merge compares across runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(output["latents"], folder / f"{stem(variant)}.pt")
    torch.save(output["frames"].half(), folder / f"{stem(variant)}.frames.pt")


def check_same_setup(first: dict, other: dict, flag: str) -> None:
    """Runs joined in one table must share model, clip, steps, the seeded weights and the kind of card."""
    for key in ("model", "clip", "steps", "weights_checksum", "device"):
        if other.get(key) != first.get(key):
            sys.exit(f"{flag}: {key} differs between the runs ({first.get(key)} vs {other.get(key)})")


def versus_peers(report: dict, ours: dict) -> None:
    """Each peer row gets `ours_speedup`: its total time over each of this framework's rows in `ours` (another
    results file of the same setup), beside that row's PSNR to stock, so a table can quote the ratio to each."""
    check_same_setup(report, ours, "--versus")
    mine = [row for row in ours["rows"] if "total_s" in row and row["variant"] != STOCK
            and not row["variant"].startswith("peer ")]
    for row in report["rows"]:
        if row["variant"].startswith("peer ") and "total_s" in row:
            row["ours_speedup"] = {m["variant"]: row["total_s"] / m["total_s"] for m in mine}
            row["ours_psnr_to_stock_db"] = {m["variant"]: m["psnr_to_stock_db"] for m in mine
                                            if "psnr_to_stock_db" in m}


def merge(paths: list[Path], out_path: Path, versus: Path | None = None, latents: Path | None = None) -> None:
    """Join the rows of runs made side by side into one report; rows that have no fidelity to stock or to
    `none` yet get it from the outputs the runs saved (--save-latents), in each run's own folder or in
    `latents` (those files brought to this machine). The runs must share model, clip, steps, weights and card.
    With `versus`, peer rows are also compared with this framework's rows there."""
    if latents is not None and not latents.is_dir():
        sys.exit(f"--latents {latents}: expected the folder the runs' --save-latents files were brought to")
    reports = [json.loads(p.read_text()) for p in paths]
    first = reports[0]
    for other in reports[1:]:
        check_same_setup(first, other, "--merge")
    commands = [c for r in reports for c in r.get("commands", [r.get("command")])]  # merged files merge again
    merged = {**first, "commands": commands, "rows": [row for r in reports for row in r["rows"]]}
    merged.pop("command", None)
    saved = {}
    for report in reports:
        folders = [Path(report["saved_to"])] if report.get("saved_to") else []
        folders += [latents] if latents is not None else []
        for row in report["rows"]:
            found = [f / stem(row["variant"]) for f in folders if (f / f"{stem(row['variant'])}.pt").is_file()]
            if found:
                saved[row["variant"]] = found[0]

    @functools.cache
    def load(variant: str) -> dict:
        base = saved[variant]
        frames = Path(f"{base}.frames.pt")
        return {"latents": torch.load(f"{base}.pt"), "frames": torch.load(frames).float() if frames.is_file() else None}

    for label, variant in (("stock", STOCK), ("none", "none")):
        if variant not in saved:
            continue
        ref = load(variant)
        for row in merged["rows"]:
            known = f"latent_rel_l2_to_{label}" in row
            if row["variant"] in saved and row["variant"] not in (STOCK, variant) and not known:
                row.update(fidelity(load(row["variant"]), ref, label))
    add_ratios(merged)
    if versus is not None:
        versus_peers(merged, json.loads(versus.read_text()))
        merged["versus"] = versus.name  # this framework's rows the peer ratios are against
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(merged, indent=2) + "\n")
    print_table(merged)


def reference_files(items: list[str]) -> dict[str, Path]:
    """`--reference NAME=FILE` values -> {NAME: FILE}; exits in one line on a missing file, before any model."""
    references = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not Path(file).is_file():
            sys.exit(f"--reference {item}: expected NAME=FILE with an existing latents file (--save-latents)")
        references[name] = Path(file)
    return references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan14b", choices=["wan14b", "cogvideox5b"])
    parser.add_argument("--steps", type=int, default=None, help="default: 40 for Wan, 50 for CogVideoX")
    parser.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS))
    parser.add_argument("--no-stock", action="store_true", help="skip stock diffusers (e.g. a second process for "
                        "lowvram, whose offloading hooks stay on the model)")
    parser.add_argument("--context-parallel", type=int, default=1, metavar="N",
                        help="under torchrun with N processes: every variant splits the video over them")
    parser.add_argument("--save-latents", type=Path, default=None, metavar="DIR",
                        help="write each row's final latents (DIR/<variant>.pt) and frames (.frames.pt)")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=FILE",
                        help="latents another run saved: every row's fidelity to them (decoded here)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="join the result files of runs made side by side into --out, then exit")
    parser.add_argument("--versus", type=Path, default=None, metavar="JSON",
                        help="with --merge: each peer row's speed ratio to this framework's rows in JSON")
    parser.add_argument("--latents", type=Path, default=None, metavar="DIR",
                        help="with --merge: the runs' --save-latents files, brought here from their machine")
    parser.add_argument("--check-inputs", action="store_true",
                        help="compare the first DiT call of stock and ours input by input, then exit")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device: checks this script")
    parser.add_argument("--peers", nargs="*", default=[], choices=list(PEERS),
                        help="peer rows on the stock pipeline (cache-dit), after this framework's variants")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out or ROOT / "benchmarks" / "results" / f"infer_{args.model}.json", args.versus,
              args.latents)
        return
    references = reference_files(args.reference)
    benchmark_device("benchmarks/infer_latency.py", args.smoke)
    main_process = True
    if args.context_parallel > 1:
        from anisora.accelerators.distributed import init_process_group, require_world

        place = require_world(args.context_parallel, "--context-parallel")
        device = local_device("auto", place.local_rank)
        init_process_group(device)
        main_process = place.is_main
        args.no_stock = True
    else:
        device = resolve_device("auto")
    steps = args.steps or (50 if args.model == "cogvideox5b" else 40)
    variants = args.variants if args.variants is not None else [
        v for v in VARIANTS if v != "fastercache" or args.model == "cogvideox5b"]
    out_path = args.out or ROOT / "benchmarks" / "results" / f"infer_{args.model}.json"
    if not args.smoke:  # a smoke run skips what cannot apply (best_effort)
        check_variants(variants, device)
    f, h, w = (9, 64, 64) if args.smoke else NATIVE[args.model]
    backbones.SMOKE["num_layers"] = 2  # (smoke only) First-Block-Cache needs a block after the first
    backbone = build(args.model, device, args.smoke)
    if hasattr(backbone.prompt_encoder, "empty_prompt"):
        backbone.prompt_encoder.empty_prompt = "encode"  # the stock pipeline encodes "" (AniSora V1: zeros)
    torch.manual_seed(0)
    g, m = guide_for(f, h, w, device)
    warm_up_stages(backbone, g, m)
    if args.check_inputs:
        check_inputs(backbone, g, m, device)
        return
    report = {"date": date.today().isoformat(), "device": device_name(device),
              "torch": torch.__version__, "model": args.model, "clip": [f, h, w], "steps": steps,
              "gpus": args.context_parallel, "weights_checksum": weights_checksum(backbone.denoiser),
              "command": "python benchmarks/infer_latency.py " + " ".join(sys.argv[1:]),
              "saved_to": str(args.save_latents.resolve()) if args.save_latents else None, "rows": []}
    if main_process:
        print(f"weights checksum {report['weights_checksum']:.6e}", flush=True)
    refs = {name: decoded(backbone, torch.load(file), f, device) for name, file in references.items()}
    if args.context_parallel > 1:
        from anisora.inference.speedups import context_parallel

        context_parallel.enable(backbone.denoiser, args.context_parallel)
    suffix = f"+cp{args.context_parallel}" if args.context_parallel > 1 else ""
    outputs: dict[str, dict] = {}

    def write() -> None:
        if main_process:
            add_ratios(report)
            print(json.dumps(report["rows"][-1]), flush=True)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(report, indent=2) + "\n")

    if not args.no_stock:
        outputs[STOCK] = stock = run_stock(backbone, g, steps, device)
        report["rows"].append(stock_row(stock))
        write()
        if main_process and args.save_latents is not None:
            save_output(stock, args.save_latents, STOCK)
    for name in variants:
        row: dict = {"variant": name + suffix}
        try:
            if name == "lowvram":
                cap_memory(device, LOWVRAM_BUDGET_GIB)
            attention, speedups = variant_spec(name, args.smoke)
            row["attention"] = set_attention_backend(backbone.denoiser, attention, device, torch.bfloat16) or "default"
            row["applied"] = apply_speedups(backbone, speedups, device)
            spec = student_sampler() if name.startswith("student") else None
            if speedups.compile:  # compile warm-up, not timed, at the timed run's batch (CFG or not)
                run_ours(backbone, g, m, 1, device, spec=None if spec is None else replace(spec, num_steps=1,
                                                                                          sigmas=spec.sigmas[:1]))
            outputs[name] = run_ours(backbone, g, m, steps, device, offload_encoders=name == "lowvram", spec=spec)
        except Exception as ex:  # one variant's failure (out of memory, missing kernel) still reports the rest
            row["error"] = error_line(ex)
        reset(backbone)
        report["rows"].append(record(row, outputs[name], outputs, refs) if name in outputs else row)
        write()
        if main_process and args.save_latents is not None and name in outputs:
            save_output(outputs[name], args.save_latents, name + suffix)
    for name in args.peers:  # last: a peer's quantization stays on the shared denoiser
        row = {"variant": f"peer {name}", "settings": PEERS[name]}
        try:
            prepare, undo, version = cache_dit_hooks(PEERS[name])
            row["peer_version"] = f"cache-dit {version}"
            outputs[row["variant"]] = run_stock(backbone, g, steps, device, prepare, undo)
        except Exception as ex:
            row["error"] = error_line(ex)
        out = outputs.get(row["variant"])
        report["rows"].append(record(row, out, outputs, refs) if out is not None else row)
        write()
        if main_process and args.save_latents is not None and out is not None:
            save_output(out, args.save_latents, row["variant"])
    if main_process:
        print_table(report)


def record(row: dict, ours: dict, outputs: dict[str, dict], refs: dict[str, dict]) -> dict:
    """A variant's row: its timings and its fidelity to stock, to `none` and to each reference."""
    row = {**row, **{k: v for k, v in ours.items() if k not in ("frames", "latents")}}
    for label, other in (("stock", outputs.get(STOCK)), ("none", outputs.get("none")), *refs.items()):
        if other is not None and other is not ours:
            row.update(fidelity(ours, other, label))
    return row


if __name__ == "__main__":
    main()
