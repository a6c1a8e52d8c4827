"""Training throughput of real-size models: seconds per step, tokens/s, model TFLOP/s, MFU and peak memory.

    python benchmarks/train_throughput.py                          # every one-GPU run below
    python benchmarks/train_throughput.py --runs wan1.3b_ops stock_wan1.3b_gc
    python benchmarks/train_throughput.py --runs wan1.3b_ddp2      # a multi-GPU run: alone in its process
    python benchmarks/train_throughput.py --smoke                  # toy sizes on any machine

Each run is `python train.py` as users launch it (Hydra config, `prepare_training`, Lightning fit) on
precomputed-latent shards written here with random tensors of the model's true shapes (480x832, 81 frames),
random weights built on the device. A callback times optimizer steps after `--warmup` steps. FLOPs per step are
counted two ways on a meta-device copy with torch's FlopCounterMode (same shapes): model FLOPs = 3 x the base
denoiser's forward, the convention MFU figures are quoted in; and the FLOPs the step executes (forward + the
backward matmuls autograd runs: a frozen base, as under LoRA, costs no weight gradients; attention backward as
counted, 2x forward; recompute not counted). Both MFUs are against the bf16 matmul peak measured first.
`--memory-cap-gib` (default 79, what an H100 80GB holds) caps the process with `set_per_process_memory_fraction`,
so an H200 answers "does it fit an H100". The stock row is diffusers' `WanTransformer3DModel` with its own
gradient checkpointing and a plain AdamW step in a bare PyTorch loop. Writes benchmarks/results/train_<run>.json
per run and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from anisora.accelerators.devices import (  # noqa: E402
    cap_memory,
    empty_cache,
    local_flash_4,
    peak_memory_gib,
    reset_peak_memory,
    synchronize,
)
from anisora.config.errors import ConfigError  # noqa: E402
from benchmarks.gpu import benchmark_device, device_name  # noqa: E402
from benchmarks.report import error_line  # noqa: E402

CLIP = ["data.num_frames=81", "data.height=480", "data.width=832", "accelerator=gpu"]
COMMON = ["model.init=random", "logger=none", "callbacks.progress_bar=none", "callbacks.sample_videos=false",
          "callbacks.lr_monitor=false", "callbacks.checkpoint_every_n_steps=100000", "data=shards", "data.batch_size=1",
          "optimizer.ema_decay=0", "optimizer.warmup_steps=0", "trainer.log_every_n_steps=1000"]
DMD = ["method=distill_dmd", "sampler=few_step_4", "sampler.num_steps=4", "method.student_every=1",
       "trainer.activation_checkpointing=full"]
RUNS: dict[str, list[str]] = {  # name -> train.py overrides (on top of COMMON and CLIP)
    "wan1.3b_ops": ["model=wan1.3b", "trainer.activation_checkpointing=ops"],
    "wan1.3b_none": ["model=wan1.3b", "trainer.activation_checkpointing=none"],
    "wan1.3b_full": ["model=wan1.3b", "trainer.activation_checkpointing=full"],
    # DiffSynth-Studio's own setting: bf16 weights and AdamW states, no fp32 master copy (less exact updates)
    "wan1.3b_full_bf16": ["model=wan1.3b", "trainer.activation_checkpointing=full", "accelerator.precision=bf16-true"],
    "wan1.3b_ops_sdpa": ["model=wan1.3b", "trainer.activation_checkpointing=ops", "accelerator.attention_backend=null"],
    "wan1.3b_ops_flash4": ["model=wan1.3b", "trainer.activation_checkpointing=ops",
                           "accelerator.attention_backend=flash_4"],
    "wan14b_lora": ["model=wan14b", "model.lora.rank=32", "model.lora.alpha=32",
                    "trainer.activation_checkpointing=full"],
    # two GPUs (nvidia-h200-x2): one run per process, Lightning launches the second rank
    "wan1.3b_ddp2": ["model=wan1.3b", "trainer.activation_checkpointing=ops", "strategy=ddp", "accelerator.devices=2"],
    "wan1.3b_fsdp2": ["model=wan1.3b", "trainer.activation_checkpointing=ops", "strategy=fsdp",
                      "accelerator.devices=2"],
    "wan14b_fsdp2_full": ["model=wan14b", "trainer.activation_checkpointing=full", "strategy=fsdp",
                          "accelerator.devices=2"],
    "wan14b_sp2_lora": ["model=wan14b", "model.lora.rank=32", "model.lora.alpha=32",
                        "trainer.activation_checkpointing=full", "strategy=ddp", "accelerator.devices=2",
                        "trainer.sequence_parallel=2"],
    # DMD distillation (student + critic + teacher), one student and one critic update per batch
    "wan1.3b_dmd_full": ["model=wan1.3b", *DMD, "method.roles_mode=full"],
    "wan1.3b_dmd_lora": ["model=wan1.3b", *DMD, "method.roles_mode=lora_shared_base"],
    "wan14b_dmd_lora": ["model=wan14b", *DMD, "method.roles_mode=lora_shared_base", "method.role_lora.rank=64"],
}
STOCK = {"stock_wan1.3b_gc": "wan1.3b"}
ONE_GPU = ["wan1.3b_ops", "wan1.3b_none", "wan1.3b_full", "wan1.3b_ops_sdpa", "stock_wan1.3b_gc", "wan14b_lora"]
SMOKE = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=16", "model.ffn_dim=64",
         "model.text_dim=32", "model.text_layers=1", "model.text_heads=2", "model.text_ff=32", "model.text_vocab=1",
         "model.vae_base_dim=8", "model.max_sequence_length=16", "model.image_dim=32", "model.added_kv_proj_dim=32",
         "model.clip_layers=1", "model.clip_heads=2", "model.clip_ff=32",
         "data.num_frames=9", "data.height=64", "data.width=64", "accelerator=cpu", "accelerator.precision=bf16-mixed"]


# ----------------------------------------------------------------------------- the device's own numbers
def matmul_peak_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """Best bf16 dense matmul rate of this device (the MFU denominator), over a few square sizes."""
    best = 0.0
    for n in (size // 2, size, size * 2) if device.type == "cuda" else (256,):
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12)
        del a, b
    return best


def attention_kernels(device: torch.device, heads: int, tokens: int, repeats: int = 3) -> list[dict]:
    """Forward and forward + backward TFLOP/s of each exact attention kernel at one Wan self-attention shape (bf16,
    head dim 128): PyTorch SDPA's flash, cuDNN and memory-efficient kernels, and FlashAttention-4 (`flash-attn-4`,
    CuTe DSL) where it is installed; a kernel that cannot run says why in one line."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return run, True  # heads first: (B, H, S, D)

    kernels = {"flash": sdpa(SDPBackend.FLASH_ATTENTION), "cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
               "efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION)}
    try:
        flash_attn_func = local_flash_4()

        def flash4(q, k, v):
            out = flash_attn_func(q, k, v)
            return out[0] if isinstance(out, tuple) else out

        kernels["flash4"] = (flash4, False)  # tokens first: (B, S, H, D)
    except ConfigError as ex:  # not installed, or its import fails on this stack: the row says why
        kernels["flash4"] = (str(ex).splitlines()[0][:300], None)
    rows = []
    for name, (run, heads_first) in kernels.items():
        row = {"kernel": name, "heads": heads, "tokens": tokens}
        try:
            if heads_first is None:
                raise RuntimeError(run)
            shape = (1, heads, tokens, 128) if heads_first else (1, tokens, heads, 128)
            row["rel_l2_to_fp32"] = agreement_with_fp32(device, run, heads_first, heads, tokens)
            rows.append({**row, **time_kernel(device, run, shape, heads * tokens * tokens * 128, repeats)})
        except Exception as ex:
            rows.append({**row, "error": f"{type(ex).__name__}: {ex}".splitlines()[0][:200]})
    return rows


def agreement_with_fp32(device: torch.device, run, heads_first: bool, heads: int, tokens: int,
                        queries: int = 1024) -> float:
    """Relative L2 of a kernel's bf16 output to exact fp32 attention, on the first `queries` query rows against
    every key: a fast kernel that computes something else shows here (bf16 rounding alone is about 3e-3)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn((1, heads, tokens, 128), generator=generator).to(device, torch.bfloat16)
               for _ in range(3))
    with torch.no_grad():
        out = run(q, k, v) if heads_first else run(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        rows = min(queries, tokens)
        scores = q[:, :, :rows].float() @ k.float().transpose(-1, -2) / 128 ** 0.5
        exact = scores.softmax(dim=-1) @ v.float()
        got = out[:, :, :rows].float()
        return float((got - exact).norm() / exact.norm())


def time_kernel(device: torch.device, run, shape: tuple[int, ...], size: int, repeats: int) -> dict[str, float]:
    """Forward and forward + backward seconds and TFLOP/s of one attention kernel on random bf16 inputs; `size` is
    heads x tokens x tokens x head dim."""
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    forward_flops = 4 * size  # QK^T and PV
    with torch.no_grad():
        fwd = timed_repeats(device, lambda: run(q, k, v), repeats)
    both = timed_repeats(device, lambda: run(q, k, v).sum().backward(), repeats)
    return {"fwd_s": fwd, "fwd_tflops": forward_flops / fwd / 1e12, "fwd_bwd_s": both,
            "tflops": forward_flops * 3.5 / both / 1e12}  # backward 2.5x the forward (recomputes the scores)


def timed_repeats(device: torch.device, step, repeats: int) -> float:
    """Seconds per call of `step`, after one untimed call (kernel selection, compilation)."""
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


# ----------------------------------------------------------------------------- inputs
def input_shapes(model: dict, frames: int, height: int, width: int) -> dict[str, tuple | None]:
    """Latent, text, guide and image-token shapes of one sample of a Wan model config (VAE x4 time, x8 space)."""
    latent = (model["out_channels"], (frames - 1) // 4 + 1, height // 8, width // 8)
    i2v = model.get("variant") == "i2v"
    return {"latent": latent, "text": (model["max_sequence_length"], model["text_dim"]),
            "guide": (model["in_channels"] - model["out_channels"], *latent[1:]),
            "image": (257, model["image_dim"]) if i2v and model.get("image_dim") else None}


def write_random_shards(folder: Path, shapes: dict, count: int = 4) -> None:
    """One shard of `count` samples with the model's true latent, text, guide and image shapes (random bf16), and
    the dataset-wide tensors beside it: what `anisora-data encode` writes, without encoding anything."""
    from anisora.data.encode import write_unconditional
    from anisora.data.shard_format import GUIDE_PREFIX, IMAGE_PREFIX, NO_GUIDE, NULL_TEXT, encode_sample, write_tar

    folder.mkdir(parents=True, exist_ok=True)
    latent, text, guide, image = shapes["latent"], shapes["text"], shapes["guide"], shapes["image"]
    gen = torch.Generator().manual_seed(0)

    def rand(shape) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(torch.bfloat16)

    parts = {NULL_TEXT: rand(text), f"{GUIDE_PREFIX}{NO_GUIDE}.pth": torch.zeros(guide, dtype=torch.bfloat16)}
    if image:
        parts[f"{IMAGE_PREFIX}{NO_GUIDE}.pth"] = torch.zeros(image, dtype=torch.bfloat16)
    write_unconditional(folder, parts)
    guided = guide[0] > 0
    samples = []
    for i in range(count):
        meta = {"caption": "a girl turns her head", "latent_shape": list(latent),
                "guides": [NO_GUIDE, *(["i2v"] if guided else [])]}
        samples.append((f"{i:09d}", encode_sample(rand(latent), rand(text), {"i2v": rand(guide)} if guided else {},
                                                  {"i2v": rand(image)} if guided and image else {}, meta)))
    write_tar(folder / "000000.tar", samples)


def meta_inputs(model: dict, shapes: dict, batch: int = 1, lora: bool = False):
    """The backbone (LoRA adapters only when `lora`) and one batch of denoiser inputs, all on the meta device:
    FLOPs are counted without memory, the same on one GPU or under FSDP."""
    from anisora.backbones import Conditioning, build_backbone

    with torch.device("meta"):
        backbone = build_backbone(model if lora else {**model, "lora": None})
        noisy = torch.zeros(batch, *shapes["latent"])
        cond = Conditioning(text=torch.zeros(batch, *shapes["text"]), guide=torch.zeros(batch, *shapes["guide"]),
                            image=torch.zeros(batch, *shapes["image"]) if shapes["image"] else None)
        timestep = torch.full((batch,), 500.0)
    return backbone, (noisy, timestep, cond)


def forward_flops(model: dict, shapes: dict, batch: int = 1) -> float:
    """FLOPs of one forward of the base denoiser (no adapters: the field's convention counts the model), as torch's
    FlopCounterMode counts matmuls and attention."""
    from torch.utils.flop_counter import FlopCounterMode

    backbone, (noisy, timestep, cond) = meta_inputs(model, shapes, batch)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        backbone.denoise(noisy, timestep, cond)
    return float(counter.get_total_flops())


def step_flops(forward: Callable[[], torch.Tensor]) -> dict[str, float]:
    """FLOPs that one training step really executes: `forward()` then backward of a scalar loss, each under
    FlopCounterMode, with the parameters' own `requires_grad`. Autograd runs only the matmuls whose results are
    needed, so a frozen weight costs its forward and the gradient of its input (when something upstream trains)
    but no weight gradient, and attention's backward counts its four matmuls (2x its forward). Activation
    recompute is not counted (MFU, not hardware FLOPs utilisation)."""
    from torch.utils.flop_counter import FlopCounterMode

    ahead, back = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with ahead:
        out = forward()
    with back:
        out.float().square().mean().backward()
    return {"forward": float(ahead.get_total_flops()), "backward": float(back.get_total_flops())}


def executed_flops(model: dict, shapes: dict, batch: int = 1) -> dict[str, float]:
    """`step_flops` of the denoiser as it trains: LoRA adapters on (the base frozen) when the config has them."""
    backbone, (noisy, timestep, cond) = meta_inputs(model, shapes, batch, lora=True)
    return step_flops(lambda: backbone.denoise(noisy, timestep, cond))


def compose_run(overrides: list[str], shards: Path, out: Path):
    """The train.py config for these overrides, with Hydra's runtime fields set as in a real run."""
    from anisora.config.store import compose_in_process

    cfg = compose_in_process(str(ROOT / "conf"), "train", [*overrides, f"data.urls={shards}/000000.tar",
                                                           f"paths.output_dir={out}", f"paths.log_dir={out}"])
    with open_dict(cfg):  # a task sees its config without the hydra node, as under @hydra.main
        del cfg["hydra"]
    return cfg


# ----------------------------------------------------------------------------- timing
class StepTimer:
    """Wall time between the ends of consecutive optimizer steps (data loading included), after a warm-up;
    peak memory is reset when timing starts."""

    def __init__(self, warmup: int) -> None:
        import lightning.pytorch as pl

        timer = self

        class Callback(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                timer.tick(module.device)

        self.callback, self.warmup, self.times, self.steps = Callback(), warmup, [], 0
        self.last: float | None = None
        self.peak_gib = 0.0

    def tick(self, device: torch.device) -> None:
        synchronize(device)
        now = time.perf_counter()
        self.steps += 1
        if self.steps > self.warmup and self.last is not None:
            self.times.append(now - self.last)
        if self.steps == self.warmup:
            reset_peak_memory(device)
        self.last = now
        self.peak_gib = peak_memory_gib(device)


# ----------------------------------------------------------------------------- runs
def run_ours(name: str, overrides: list[str], steps: int, warmup: int, cap_gib: float, device: torch.device,
             smoke: bool) -> dict:
    """`python train.py <overrides>` on random shards, timed."""
    from anisora.tasks.train import prepare_training

    work = Path(tempfile.mkdtemp(prefix=f"throughput_{name}_"))
    clip = SMOKE if smoke else CLIP
    cfg = compose_run([*COMMON, *overrides, *clip, f"trainer.max_steps={warmup + steps + 1}"], work / "shards",
                      work / "run")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    shapes = input_shapes(model, cfg.data.num_frames, cfg.data.height, cfg.data.width)
    write_random_shards(work / "shards", shapes)
    timer = StepTimer(warmup)
    build_start = time.perf_counter()
    cap_memory(device, 0)  # the build may pass the cap for a moment (fp32 weights before the frozen ones shrink)
    with torch.device(device):  # random weights created where they train (a 14B model in fp32 on a CPU is slow)
        run = prepare_training(cfg, work / "run", [timer.callback])
    run.trainer.callbacks = [c for c in run.trainer.callbacks if not isinstance(c, ModelCheckpoint)]  # no disk IO
    empty_cache()
    build_s = time.perf_counter() - build_start
    cap_memory(device, cap_gib)
    run.trainer.fit(run.method, datamodule=run.datamodule)
    sequence_parallel = int(cfg.trainer.sequence_parallel)
    samples = cfg.data.batch_size * int(cfg.accelerator.devices) // sequence_parallel
    row = summary(name, timer, build_s, samples)
    if "method=distill_dmd" not in overrides:  # the FLOP model counts one SFT step
        row.update(model_numbers(forward_flops(model, shapes), executed_flops(model, shapes), shapes["latent"], row))
    row["overrides"] = overrides
    row["trainable_params_b"] = sum(p.numel() for p in run.method.parameters() if p.requires_grad) / 1e9
    del run
    shutil.rmtree(work, ignore_errors=True)
    empty_cache()
    return row


def run_stock(name: str, model: str, steps: int, warmup: int, cap_gib: float, device: torch.device,
              smoke: bool) -> dict:
    """diffusers' Wan transformer alone: `enable_gradient_checkpointing()`, fp32 weights under bf16 autocast, MSE,
    a plain AdamW step; the same shapes and random inputs as ours."""
    from anisora.backbones.wan_loading import WanSpec, build_random_wan

    cfg = compose_run([*COMMON, f"model={model}", *(SMOKE if smoke else CLIP)], Path("/nonexistent"), Path("/tmp"))
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    build_start = time.perf_counter()
    cap_memory(device, 0)
    with torch.device(device):
        backbone = build_random_wan(WanSpec(**{k: v for k, v in spec.items() if k in WanSpec.__dataclass_fields__}))
    denoiser = backbone.denoiser.train()
    denoiser.enable_gradient_checkpointing()
    backbone.prompt_encoder.to("cpu")
    empty_cache()
    build_s = time.perf_counter() - build_start
    cap_memory(device, cap_gib)
    c, t, h, w = backbone.latent_shape(cfg.data.num_frames, cfg.data.height, cfg.data.width)
    gen = torch.Generator(device).manual_seed(0)
    noisy = torch.randn(1, denoiser.config.in_channels, t, h, w, device=device, generator=gen)
    target = torch.randn(1, c, t, h, w, device=device, generator=gen)
    text = torch.randn(1, backbone.prompt_encoder.max_sequence_length, denoiser.config.text_dim, device=device,
                       generator=gen)
    timestep = torch.tensor([500.0], device=device)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-5)
    timer = StepTimer(warmup)
    for _ in range(warmup + steps + 1):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = denoiser(hidden_states=noisy, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        torch.nn.functional.mse_loss(pred.float(), target).backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.tick(device)
    row = summary(name, timer, build_s, 1)
    shapes = input_shapes(spec, cfg.data.num_frames, cfg.data.height, cfg.data.width)
    row.update(model_numbers(forward_flops(spec, shapes), executed_flops(spec, shapes), shapes["latent"], row))
    row["overrides"] = [f"model={model}", "diffusers enable_gradient_checkpointing()", "torch.optim.AdamW"]
    row["trainable_params_b"] = sum(p.numel() for p in denoiser.parameters()) / 1e9
    del backbone, denoiser, optimizer
    empty_cache()
    return row


def summary(name: str, timer: StepTimer, build_s: float, samples_per_step: int) -> dict:
    times = timer.times
    step_s = sorted(times)[len(times) // 2] if times else float("nan")  # median: robust to one slow step
    return {"run": name, "build_s": build_s, "timed_steps": len(times), "step_s": step_s,
            "step_s_all": times, "peak_gib": timer.peak_gib, "samples_per_step": samples_per_step}


CONVENTION = "3 x forward (the field's MFU: every weight trains, attention backward 2x forward)"
EXECUTED = ("executed (forward + the backward matmuls autograd runs: no weight gradients of frozen weights; "
            "no recompute)")


def model_numbers(forward: float, executed: dict[str, float], latent_shape: tuple, row: dict) -> dict:
    """Tokens per step and FLOPs per step by both counts -> throughput; the caller divides by the peak for MFU.
    `forward` is one base-model forward; `executed` is `step_flops` of the model as it trains (adapters included)."""
    _, t, h, w = latent_shape
    samples = row["samples_per_step"]
    tokens = t * (h // 2) * (w // 2) * samples  # Wan's 1x2x2 patches
    model_flops = 3 * forward * samples
    ran = (executed["forward"] + executed["backward"]) * samples
    return {"tokens_per_step": tokens, "tokens_per_s": tokens / row["step_s"], "forward_tflop": forward / 1e12,
            "model_tflop_per_step": model_flops / 1e12, "model_tflops": model_flops / row["step_s"] / 1e12,
            "flop_convention": CONVENTION, "executed_forward_tflop": executed["forward"] / 1e12,
            "executed_backward_tflop": executed["backward"] / 1e12, "executed_tflop_per_step": ran / 1e12,
            "executed_tflops": ran / row["step_s"] / 1e12, "executed_convention": EXECUTED}


def recount(path: Path) -> dict:
    """Add the executed-FLOP figures to a results json written before they existed: the FLOPs are counted here
    on the meta device (no GPU) for the run's own configuration, and divided by the json's own step time and
    measured peak. The note names this command."""
    result = json.loads(path.read_text())
    name = result["run"]
    model_name = STOCK.get(name)
    overrides = [f"model={model_name}"] if model_name else RUNS[name]
    cfg = compose_run([*COMMON, *overrides, *CLIP], Path("/nonexistent"), Path("/tmp"))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    shapes = input_shapes(model, cfg.data.num_frames, cfg.data.height, cfg.data.width)
    numbers = model_numbers(forward_flops(model, shapes), executed_flops(model, shapes), shapes["latent"], result)
    if not math.isclose(numbers["forward_tflop"], result["forward_tflop"], rel_tol=1e-6):
        raise SystemExit(f"{path}: forward count {numbers['forward_tflop']:.3f} TFLOP differs from the run's "
                         f"{result['forward_tflop']:.3f}: the model changed since, recount on a GPU run instead")
    result.update(numbers)
    result["mfu_executed"] = result["executed_tflops"] / result["bf16_matmul_peak_tflops"]
    result["executed_note"] = (f"executed FLOPs counted on {date.today().isoformat()} by `python "
                               f"benchmarks/train_throughput.py --recount {path.name}` (meta device, this run's "
                               "configuration) and divided by this run's step_s and bf16_matmul_peak_tflops")
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=None, choices=[*RUNS, *STOCK])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (kernel selection, allocator)")
    parser.add_argument("--memory-cap-gib", type=float, default=79.0,
                        help="an H100 80GB holds 79 GiB; 0: the whole device")
    parser.add_argument("--attention", action="store_true", help="also time each attention kernel at Wan's shapes")
    parser.add_argument("--attention-only", action="store_true", help="only the attention kernel table")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device: checks this script")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--recount", nargs="+", type=Path, metavar="JSON",
                        help="add the executed-FLOP figures to earlier results files (no GPU needed), then stop")
    args = parser.parse_args()
    if args.recount:
        for path in args.recount:
            row = recount(path if path.is_file() else args.out / path)
            print(f"{row['run']}: MFU {row['mfu']:.1%} (3 x fwd), {row['mfu_executed']:.1%} (executed)")
        return
    device = benchmark_device("benchmarks/train_throughput.py", args.smoke)
    runs = args.runs or ONE_GPU
    if len(runs) > 1 and any(int(dict(o.split("=", 1) for o in RUNS.get(r, [])).get("accelerator.devices", 1)) > 1
                             for r in runs):
        sys.exit("a multi-GPU run re-launches this script per rank: give it alone to --runs")
    rank = int(os.environ.get("LOCAL_RANK", 0))
    header = {"date": date.today().isoformat(), "device": device_name(device), "torch": torch.__version__,
              "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
              "memory_cap_gib": args.memory_cap_gib}
    peak = matmul_peak_tflops(device)
    header["bf16_matmul_peak_tflops"] = peak
    if rank == 0:
        print(json.dumps(header), flush=True)
    if (args.attention or args.attention_only) and device.type == "cuda" and rank == 0:
        header["attention_kernels"] = [r for heads in (12, 40) for r in attention_kernels(device, heads, 32760)]
        for row in header["attention_kernels"]:
            print(json.dumps(row), flush=True)
        (args.out / "train_attention_kernels.json").write_text(json.dumps(header, indent=2) + "\n")
        if args.attention_only:
            return
    rows = []
    for name in runs:
        try:
            if name in STOCK:
                row = run_stock(name, STOCK[name], args.steps, args.warmup, args.memory_cap_gib, device, args.smoke)
            else:
                row = run_ours(name, RUNS[name], args.steps, args.warmup, args.memory_cap_gib, device, args.smoke)
            if "model_tflops" in row:
                row["mfu"] = row["model_tflops"] / peak
                row["mfu_executed"] = row["executed_tflops"] / peak
        except Exception as ex:  # out of memory in one run still reports the others
            traceback.print_exc()
            row = {"run": name, "error": error_line(ex.__cause__ or ex)}  # (hydra wraps a builder's error)
        if "error" in row:  # out of the except block: the traceback's frames (the failed run's model) are gone
            gc.collect()
            empty_cache()
        if rank != 0:
            continue
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"train_{name}.json").write_text(json.dumps({**header, **row}, indent=2) + "\n")
    if rank != 0:
        return
    print(f"\n{header['device']}, bf16 matmul peak {peak:.0f} TFLOP/s, memory cap {args.memory_cap_gib:g} GiB")
    print("| run | s/step | tokens/s | model TFLOP/s (3 x fwd) | MFU (3 x fwd) | executed TFLOP/s | MFU (executed) "
          "| peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['run']} | failed: {row['error']} |")
            continue
        if "model_tflops" not in row:  # distillation rows: time and memory only
            print(f"| {row['run']} | {row['step_s']:.2f} | - | - | - | - | - | "
                  f"{row['peak_gib']:.1f} |")
            continue
        print(f"| {row['run']} | {row['step_s']:.2f} | {row['tokens_per_s']:.0f} | {row['model_tflops']:.0f} | "
              f"{row.get('mfu', math.nan):.1%} | {row['executed_tflops']:.0f} | "
              f"{row.get('mfu_executed', math.nan):.1%} | {row['peak_gib']:.1f} |")
    print(f"3 x fwd: {CONVENTION}\nexecuted: {EXECUTED}")


if __name__ == "__main__":
    main()
