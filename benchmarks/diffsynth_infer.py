"""DiffSynth-Studio's own Wan2.1 I2V pipeline on the seeded weights of benchmarks/infer_latency.py, row by row.

    python benchmarks/diffsynth_infer.py --reference stock=DIR/stock.pt --save-latents DIR   # one GPU, 480x832x81
    python benchmarks/diffsynth_infer.py --stock --rows diffsynth_teacache0.26     # stock diffusers timed here too
    python benchmarks/diffsynth_infer.py --rows diffsynth_teacache0.26 --reference stock=DIR/stock.pt
    python benchmarks/diffsynth_infer.py --smoke                      # toy DiT/T5/VAE (real ViT-H) on any device
    python benchmarks/infer_latency.py --merge benchmarks/results/infer_wan14b_peers.json \\
        benchmarks/results/infer_wan14b_diffsynth.json --versus benchmarks/results/infer_wan14b.json --out ...

The weights are built exactly as infer_latency.py builds them (same seed, printed as the same checksum) and handed
to DiffSynth's modules in its layout (benchmarks/diffsynth_weights.py; every component's parity with ours is
measured first and recorded). Then its `WanVideoPipeline.__call__` runs end to end: its prompt and image embedders,
its VAE (tiled, its default), its flow-matching Euler sampler, CFG 5, 40 steps, the same prompt, guide image and
seed (its noise is drawn exactly as the stock pipeline draws it). Its scheduler's shift is set to stock's 3.0
(`--sigma-shift`; its own default is 5.0), so that fidelity to stock measures its solver, not another schedule.
Rows: its defaults; its exact speed-ups (batched CFG `cfg_merge` and its regional `compile_pipeline`); TeaCache at
the thresholds TeaCache publishes for Wan2.1 I2V-14B 480P (0.13 and 0.26, its `tea_cache_model_id`
coefficients), alone and compiled. Fidelity: PSNR and latent relative L2 to stock diffusers (`--stock`: its
pipeline timed first in this process on the same modules; or `--reference`, latents infer_latency.py saved,
decoded here by the same VAE) and to this run's exact rows (default, batched CFG + compile). Attention is
what DiffSynth's own dispatch picks (FlashAttention-3, -2, Sage, else PyTorch SDPA). Writes
benchmarks/results/infer_wan14b_diffsynth.json, in infer_latency.py's format, for its --merge.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backbones  # noqa: E402
import infer_latency  # noqa: E402
from backbones import NATIVE, PROMPT, ROOT, build, guide_for, timed  # noqa: E402
from diffsynth_weights import diffsynth_models, parity  # noqa: E402
from gpu import benchmark_device, device_name  # noqa: E402
from report import error_line  # noqa: E402

from anisora.accelerators.devices import synchronize  # noqa: E402

TEACACHE_MODEL = "Wan2.1-I2V-14B-480P"
ROWS = {  # name -> its pipeline's settings; compiled rows last (compile_pipeline stays on the blocks)
    "diffsynth": {},
    "diffsynth_teacache0.13": {"tea_cache_l1_thresh": 0.13},
    "diffsynth_teacache0.26": {"tea_cache_l1_thresh": 0.26},
    "diffsynth_cfg_merge_compile": {"cfg_merge": True, "compile": True},
    "diffsynth_teacache0.26_compile": {"tea_cache_l1_thresh": 0.26, "compile": True},
}
#: its exact rows (no cache): every other row's fidelity is measured against each of them that ran
EXACT = ("diffsynth", "diffsynth_cfg_merge_compile")
#: what infer_latency.py's smoke world shrinks that DiffSynth hard-codes (its image encoder is open-clip's ViT-H/14,
#: whose 1280-wide features its DiT's image projection expects)
REAL_IN_SMOKE = ("image_dim", "clip_layers", "clip_heads", "clip_ff")


def attention_kernel() -> str:
    from diffsynth.models import wan_video_dit as dit

    for flag, name in (("FLASH_ATTN_3_AVAILABLE", "flash-attn 3"), ("FLASH_ATTN_2_AVAILABLE", "flash-attn 2"),
                       ("SAGE_ATTN_AVAILABLE", "sageattention")):
        if getattr(dit, flag, False):
            return name
    return "torch SDPA"


class Tokenizer:
    """Our tokenizer behind DiffSynth's `HuggingfaceTokenizer` call (which loads one only from a folder)."""

    def __init__(self, tokenizer, seq_len: int):
        from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer

        self.inner = HuggingfaceTokenizer.__new__(HuggingfaceTokenizer)
        self.inner.name, self.inner.seq_len, self.inner.clean = "anisora", seq_len, "whitespace"
        self.inner.tokenizer, self.inner.vocab_size = tokenizer, tokenizer.vocab_size

    def __call__(self, sequence, **kwargs):
        return self.inner(sequence, **kwargs)


def build_pipeline(backbone, device: torch.device, dtype: torch.dtype):
    from diffsynth.pipelines.wan_video import WanVideoPipeline

    pipe = WanVideoPipeline(device=str(device), torch_dtype=dtype)
    models = diffsynth_models(backbone, dtype)
    for name, module in models.items():
        setattr(pipe, name, module)
    pipe.tokenizer = Tokenizer(backbone.prompt_encoder.tokenizer, backbone.prompt_encoder.max_sequence_length)
    pipe.height_division_factor = pipe.width_division_factor = pipe.vae.upsampling_factor * 2
    pipe.vram_management_enabled = pipe.check_vram_management_state()
    return pipe, models


class Probe:
    """Synchronised wall seconds of every `model_fn` call (the DiT, both CFG branches) and of the VAE decode, and the
    final latents the decode receives. Every tenth call prints its seconds, so that a run a time limit stops still
    tells its per-call speed."""

    def __init__(self, pipe, device: torch.device):
        self.device, self.dit_s, self.decode_s, self.latents, self.calls = device, 0.0, 0.0, None, 0
        model_fn, decode = pipe.model_fn, pipe.vae.decode

        def timed_model_fn(**kwargs):
            start = time.perf_counter()
            out = model_fn(**kwargs)
            synchronize(device)
            seconds = time.perf_counter() - start
            self.dit_s, self.calls = self.dit_s + seconds, self.calls + 1
            if self.calls % 10 == 0:
                print(f"DiT call {self.calls}: {seconds:.2f} s", flush=True)
            return out

        def timed_decode(hidden_states, *args, **kwargs):
            self.latents = hidden_states.float().cpu()
            start = time.perf_counter()
            out = decode(hidden_states, *args, **kwargs)
            synchronize(device)
            self.decode_s += time.perf_counter() - start
            return out

        pipe.model_fn, pipe.vae.decode = timed_model_fn, timed_decode

    def reset(self) -> None:
        self.dit_s, self.decode_s, self.latents, self.calls = 0.0, 0.0, None, 0


def call_kwargs(image, f: int, h: int, w: int, steps: int, shift: float, settings: dict) -> dict:
    kwargs = {"prompt": PROMPT, "negative_prompt": "", "input_image": image, "seed": 0, "rand_device": "cpu",
              "height": h, "width": w, "num_frames": f, "cfg_scale": 5.0, "num_inference_steps": steps,
              "sigma_shift": shift, "tiled": True, "output_type": "floatpoint", "progress_bar_cmd": lambda x: x,
              "cfg_merge": settings.get("cfg_merge", False)}
    if "tea_cache_l1_thresh" in settings:
        kwargs.update(tea_cache_l1_thresh=settings["tea_cache_l1_thresh"], tea_cache_model_id=TEACACHE_MODEL)
    return kwargs


def run_row(pipe, probe: Probe, kwargs: dict, device: torch.device) -> dict:
    probe.reset()
    video, total, peak = timed(device, pipe, **kwargs)
    steps = kwargs["num_inference_steps"]
    return {"total_s": total, "dit_step_s": probe.dit_s / steps, "vae_decode_s": probe.decode_s,
            "peak_gib": peak, "frames": infer_latency.unit_frames(video), "latents": probe.latents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sigma-shift", type=float, default=3.0, help="its scheduler's shift (stock: 3.0)")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=FILE",
                        help="latents infer_latency.py saved (stock=DIR/stock.pt): every row's fidelity to them")
    parser.add_argument("--stock", action="store_true",
                        help="first run diffusers' own pipeline on the same modules: a stock row and reference here")
    parser.add_argument("--save-latents", type=Path, default=None, metavar="DIR")
    parser.add_argument("--check", action="store_true", help="only measure each component's parity, then exit")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device: checks this script")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "infer_wan14b_diffsynth.json")
    args = parser.parse_args()
    references = infer_latency.reference_files(args.reference)
    if args.stock and "stock" in references:
        sys.exit("--stock and --reference stock=...: give one of them")
    device = benchmark_device("benchmarks/diffsynth_infer.py", args.smoke)
    f, h, w = (9, 64, 64) if args.smoke else NATIVE["wan14b"]
    steps = 2 if args.smoke else args.steps
    for key in REAL_IN_SMOKE:
        backbones.SMOKE.pop(key, None)
    backbones.SMOKE["num_layers"] = 2  # as infer_latency.py's smoke run
    # a head width whose RoPE split is the same in both (DiffSynth: dim // 3 per spatial axis; diffusers:
    # 2 * (dim // 6)); they agree at Wan's 128, not at the smoke world's 16
    backbones.SMOKE.update(attention_head_dim=24, added_kv_proj_dim=2 * 24)
    backbone = build("wan14b", device, args.smoke)
    dtype = next(backbone.denoiser.parameters()).dtype
    torch.manual_seed(0)
    g, m = guide_for(f, h, w, device)  # the guide infer_latency.py draws, from the same seed
    from anisora.backbones.wan_parts import to_pil_images

    image = to_pil_images(g[:, :, 0])[0]
    checksum = infer_latency.weights_checksum(backbone.denoiser)
    print(f"weights checksum {checksum:.6e}", flush=True)
    pipe, models = build_pipeline(backbone, device, dtype)
    report = {"date": date.today().isoformat(), "device": device_name(device),
              "torch": torch.__version__, "model": "wan14b", "clip": [f, h, w],
              "steps": steps, "gpus": 1, "weights_checksum": checksum,
              "peer_version": f"diffsynth {metadata.version('diffsynth')}", "attention": attention_kernel(),
              "sigma_shift": args.sigma_shift, "parity_rel_l2": parity(backbone, models, 5, 64, 64),
              "command": "python benchmarks/diffsynth_infer.py " + " ".join(sys.argv[1:]),
              "saved_to": str(args.save_latents.resolve()) if args.save_latents else None, "rows": []}
    print("parity (relative L2, DiffSynth's module vs ours):", json.dumps(report["parity_rel_l2"]), flush=True)
    if args.check:
        return
    refs = {name: infer_latency.decoded(backbone, torch.load(file), f, device) for name, file in references.items()}
    if args.stock:  # the same run's stock diffusers row, timed first as infer_latency.py times it
        backbones.warm_up_stages(backbone, g, m)
        refs["stock"] = stock = infer_latency.run_stock(backbone, g, steps, device)
        report["rows"].append(infer_latency.stock_row(stock))
        print(json.dumps(report["rows"][-1]), flush=True)
        if args.save_latents is not None:
            infer_latency.save_output(stock, args.save_latents, infer_latency.STOCK)
    probe = Probe(pipe, device)
    run_row(pipe, probe, call_kwargs(image, f, h, w, 1, args.sigma_shift, {}), device)  # warm-up, not timed
    compiled = False
    outputs: dict[str, dict] = {}
    for name in args.rows:
        settings = ROWS[name]
        row = {"variant": f"peer {name}", "peer_version": report["peer_version"], "attention": report["attention"],
               "settings": {**settings, "sigma_shift": args.sigma_shift, "tiled_vae": True,
                            **({"tea_cache_model_id": TEACACHE_MODEL} if "tea_cache_l1_thresh" in settings else {})}}
        try:
            if settings.get("compile") and not compiled:
                pipe.compile_pipeline()  # its regional compile of the DiT blocks (mode default, dynamic)
                compiled = True
            if settings.get("compile"):  # compile warm-up at the timed run's batch, not timed
                run_row(pipe, probe, call_kwargs(image, f, h, w, 1, args.sigma_shift, settings), device)
            outputs[name] = out = run_row(pipe, probe, call_kwargs(image, f, h, w, steps, args.sigma_shift, settings),
                                          device)
            row.update({k: v for k, v in out.items() if k not in ("frames", "latents")})
            for label, other in (*refs.items(), *((exact, outputs.get(exact)) for exact in EXACT)):
                if other is not None and other is not out:
                    row.update(infer_latency.fidelity(out, other, label))
            if args.save_latents is not None:
                infer_latency.save_output(out, args.save_latents, row["variant"])
        except Exception as ex:  # one row's failure (out of memory, a compile error) still reports the rest
            row["error"] = error_line(ex)
        report["rows"].append(row)
        if name in EXACT and "error" not in row:  # an exact row that ran after cached ones (compiled rows run last)
            for earlier in report["rows"][:-1]:
                earlier_out = outputs.get(earlier["variant"].removeprefix("peer "))
                if earlier_out is not None:
                    earlier.update(infer_latency.fidelity(earlier_out, outputs[name], name))
        infer_latency.add_ratios(report)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    infer_latency.print_table(report)


if __name__ == "__main__":
    main()
