"""Speed-ups compose with any model: exact where they should be, deterministic, and a one-line refusal (or a
best_effort skip) where the device cannot run them."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import ROOT

from anisora.backbones.tiny import TinyBackboneSpec, build_tiny_backbone
from anisora.config.errors import ConfigError
from anisora.config.store import compose_in_process
from anisora.diffusion.sampling import SamplerSpec
from anisora.inference.pipeline import generate_pixels
from anisora.inference.speedups import SpeedupSpec, apply_speedups, check_speedups

CPU = torch.device("cpu")
PROMPT = ["a red slime moves left across the meadow."]
SPEC = SamplerSpec(name="euler", num_steps=6, guidance_scale=4.0)


def tiny():
    return build_tiny_backbone(TinyBackboneSpec(num_layers=2, num_attention_heads=2, attention_head_dim=8,
                                                ffn_dim=16, text_dim=16, text_layers=1, text_heads=2)).eval()


def guide() -> tuple[torch.Tensor, torch.Tensor]:
    g, m = torch.zeros(1, 3, 5, 16, 16), torch.zeros(1, 5, 16, 16)
    g[:, :, 0], m[:, 0] = 0.3, 1
    return g, m


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2); 100 for identical videos."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 100.0 if mse == 0 else 10 * math.log10(4.0 / mse)


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return generate_pixels(tiny(), PROMPT, *guide(), [1], SPEC)


# lossy floors: PSNR to the plain output measured on this tiny model (first_block 33.8 dB, taylorseer 54.3,
# taylorseer_lite 35.4, faster 50.2, mag 42.9), each floor about 6 dB under it; None: must be exact
@pytest.mark.parametrize(("options", "floor_db"), [
    ({"compile": True, "compile_backend": "aot_eager"}, None),
    ({"cache": "first_block", "cache_threshold": 0.0}, None),  # nothing is ever similar enough to reuse
    ({"cache": "first_block", "cache_threshold": 0.5}, 28.0),
    ({"cache": "taylorseer", "cache_interval": 2, "cache_warmup_steps": 1}, 48.0),
    ({"cache": "taylorseer_lite", "cache_interval": 2, "cache_warmup_steps": 1}, 29.0),
    ({"cache": "faster"}, 44.0),
    ({"cache": "mag", "mag_ratios": [1.0] * 6, "cache_threshold": 0.5}, 36.0),
    ({"compile": True, "compile_backend": "aot_eager", "cache": "first_block", "cache_threshold": 0.5}, 28.0),
])
def test_each_speedup_runs_repeatably_and_lossless_ones_are_exact(reference, options, floor_db):
    backbone = tiny()
    applied = apply_speedups(backbone, SpeedupSpec(**options), CPU)
    assert applied
    first = generate_pixels(backbone, PROMPT, *guide(), [1], SPEC)
    again = generate_pixels(backbone, PROMPT, *guide(), [1], SPEC)
    assert torch.equal(first, again)  # cache state is reset between videos
    if floor_db is None:
        assert torch.equal(first, reference)
    else:  # it skips work (so differs) but stays close to the plain output
        assert not torch.equal(first, reference) and psnr(first, reference) >= floor_db, psnr(first, reference)


def test_faster_cache_on_cogvideox_batches_uncond_first():
    from test_cogvideox import TINY

    from anisora.backbones.cogvideox import CogVideoXSpec, build_random_cogvideox

    spec = SamplerSpec(name="cogvideox_dpm", num_steps=4, guidance_scale=6.0)
    g, m = torch.zeros(1, 3, 9, 32, 32), torch.zeros(1, 9, 32, 32)
    m[:, 0] = 1
    plain = generate_pixels(build_random_cogvideox(CogVideoXSpec(**TINY)), PROMPT, g, m, [2], spec)
    cached = build_random_cogvideox(CogVideoXSpec(**TINY))
    assert apply_speedups(cached, SpeedupSpec(cache="faster"), CPU) == ["cache=faster"]
    assert cached.cfg_uncond_first
    out = generate_pixels(cached, PROMPT, g, m, [2], spec)
    assert out.shape == plain.shape and not torch.equal(out, plain)
    # random weights, 4 DPM steps: measured 22.1-24.1 dB to the plain output over runs
    assert psnr(out, plain) >= 18.0, psnr(out, plain)


@pytest.mark.parametrize(("options", "key"), [
    ({"fp8": True}, "speedup.fp8"),
    ({"lowvram": True}, "speedup.lowvram"),
    ({"cache": "mag"}, "speedup.mag_ratios"),
    ({"compile": True, "compile_backend": "nope"}, "speedup.compile_backend"),
])
def test_what_cannot_run_here_fails_in_one_line_or_is_skipped_when_best_effort(reference, options, key):
    with pytest.raises(ConfigError) as err:
        check_speedups(SpeedupSpec(**options), CPU)
    assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)
    backbone = tiny()
    assert apply_speedups(backbone, SpeedupSpec(**options, best_effort=True), CPU) == []
    assert torch.equal(generate_pixels(backbone, PROMPT, *guide(), [1], SPEC), reference)


@pytest.mark.parametrize(("choice", "expected"), [
    ("speedup=[compile,cache]", {"compile": True, "cache": "first_block", "fp8": False}),
    ("speedup=fast", {"compile": True, "cache": "first_block", "fp8": True}),
    ("speedup=[lossless,taylorseer]", {"compile": True, "cache": "taylorseer", "fp8": False}),
    ("speedup=[fastercache,lowvram]", {"cache": "faster", "lowvram": True}),
    ("speedup=[fp8,taylorseer_lite]", {"cache": "taylorseer_lite", "fp8": True, "cache_interval": 5}),
])
def test_speedup_options_compose_on_the_command_line(choice, expected):
    for task in ("infer", "evaluate"):
        cfg = compose_in_process(str(ROOT / "conf"), task, [choice])
        spec = SpeedupSpec.from_config(cfg.speedup)
        assert {k: getattr(spec, k) for k in expected} == expected


def test_first_block_cache_refuses_a_one_block_model():
    one = build_tiny_backbone(TinyBackboneSpec(num_layers=1, num_attention_heads=2, attention_head_dim=8,
                                               ffn_dim=16, text_dim=16, text_layers=1, text_heads=2))
    with pytest.raises(ConfigError, match="^speedup.cache: first_block needs a model with at least 2"):
        apply_speedups(one, SpeedupSpec(cache="first_block"), CPU)


@pytest.mark.parametrize(("kind", "capability", "dtype", "expected"), [
    ("cuda", (9, 0), torch.bfloat16, "_native_cudnn"), ("cuda", (8, 0), torch.bfloat16, "_native_flash"),
    ("cuda", (7, 5), torch.float16, None), ("cuda", (9, 0), torch.float32, None),
    ("npu", None, torch.bfloat16, "_native_npu"), ("cpu", None, torch.bfloat16, None),
])
def test_auto_attention_picks_the_exact_fused_kernel_per_device(monkeypatch, kind, capability, dtype, expected):
    import types

    from anisora.accelerators import devices

    monkeypatch.setattr(devices, "compute_capability", lambda device: capability)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # no FlashAttention-3 installed
    assert devices.pick_attention_backend(types.SimpleNamespace(type=kind), dtype) == expected


@pytest.mark.parametrize(("installed", "expected"), [
    (set(), "_native_cudnn"), ({"flash_4"}, "flash_4"), ({"_flash_3", "flash_4"}, "_flash_3"),
])
def test_auto_attention_on_hopper_takes_the_fastest_installed_kernel(monkeypatch, installed, expected):
    import types

    from anisora.accelerators import devices

    monkeypatch.setattr(devices, "compute_capability", lambda device: (9, 0))
    monkeypatch.setattr(devices, "installed_attention_kernels", lambda: set(installed))
    assert devices.pick_attention_backend(types.SimpleNamespace(type="cuda"), torch.bfloat16) == expected


def test_auto_attention_skips_a_flash_4_package_that_does_not_import(monkeypatch):
    """A flash_attn.cute that is found but fails to import (its CUDA DSL missing) leaves `auto` on cuDNN."""
    import importlib.util
    import types

    from anisora.accelerators import devices

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(devices, "compute_capability", lambda device: (9, 0))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name.startswith("flash_attn")
                        and name != "flash_attn_interface" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)  # import fails as a broken install's would
    assert devices.installed_attention_kernels() == set()
    assert devices.pick_attention_backend(types.SimpleNamespace(type="cuda"), torch.bfloat16) == "_native_cudnn"


def test_auto_attention_on_the_cpu_keeps_the_default():
    from anisora.accelerators.devices import set_attention_backend

    backbone = build_tiny_backbone(TinyBackboneSpec())
    assert set_attention_backend(backbone.denoiser, "auto", torch.device("cpu"), torch.bfloat16) is None
    assert set_attention_backend(backbone.denoiser, "_native_math") == "_native_math"


def test_compiled_blocks_under_a_step_cache_compile_once_and_uncompile():
    """The cache's hooks wrap the compiled block forward instead of being traced into it: one compilation
    serves every block and every skip/compute decision (traced in, each block and decision recompiled)."""
    from torch._dynamo.utils import counters

    from anisora.inference.speedups.compile import uncompile_blocks

    backbone = build_tiny_backbone(TinyBackboneSpec(num_layers=4, num_attention_heads=2, attention_head_dim=8,
                                                    ffn_dim=16, text_dim=16, text_layers=1, text_heads=2)).eval()
    torch._dynamo.reset()
    counters.clear()
    apply_speedups(backbone, SpeedupSpec(compile=True, compile_backend="eager", cache="first_block",
                                         cache_threshold=0.5), CPU)
    generate_pixels(backbone, PROMPT, *guide(), [1], SPEC)
    assert counters["frames"]["ok"] == 1
    backbone.denoiser.disable_cache()
    uncompile_blocks(backbone.denoiser)
    assert all("forward" not in vars(block) for block in backbone.denoiser.blocks)


def test_full_taylorseer_that_cannot_fit_the_gpu_is_refused_before_sampling(monkeypatch):
    """Wan-14B at 480x832x81 with CFG: 40 blocks x 3 cached outputs x 2 factors x 2 rows x 32,760 tokens x 5,120
    channels in bf16 is about 150 GiB, so an 80 GB GPU is refused in one line naming the lighter cache."""
    from types import SimpleNamespace

    from diffusers import WanTransformer3DModel

    from anisora.inference.speedups.caches import check_cache_memory, taylorseer_bytes

    with torch.device("meta"):
        dit = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                                    in_channels=36, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                                    num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                    image_dim=1280, added_kv_proj_dim=5120)
    from anisora.backbones.wan import WanBackbone

    backbone = SimpleNamespace(denoiser=dit, speedup_profile=WanBackbone.speedup_profile)
    need, parts = taylorseer_bytes(backbone, (16, 21, 60, 104), rows=2)
    assert parts == "120 cached outputs x 2 factors x 2 rows x 32760 tokens x 5120"
    assert 149 < need / 2**30 < 151
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30))
    with pytest.raises(ConfigError, match=r"speedup\.cache: taylorseer keeps 150 GiB .*=taylorseer_lite"):
        check_cache_memory(backbone, SpeedupSpec(cache="taylorseer"), (16, 21, 60, 104), 2, torch.device("cuda"))
    check_cache_memory(backbone, SpeedupSpec(cache="taylorseer"), (16, 21, 30, 52), 1, torch.device("cuda"))  # fits


def test_flash_4_runs_the_installed_package_kernel_through_diffusers(monkeypatch):
    """`accelerator.attention_backend=flash_4` routes every attention call to `flash_attn.cute.flash_attn_func`
    (tokens-first q, k, v) with no Hub download, and matches the default kernel."""
    import sys
    import types

    from anisora.accelerators.devices import set_attention_backend

    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        calls.append(q.shape)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                               scale=softmax_scale, is_causal=causal)
        return out.transpose(1, 2), None

    package = types.ModuleType("flash_attn")
    package.__path__ = []
    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    package.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    backbone = build_tiny_backbone(TinyBackboneSpec(num_layers=2, num_attention_heads=2, attention_head_dim=8,
                                                    ffn_dim=16, text_dim=16, text_layers=1, text_heads=2)).eval()
    denoiser = backbone.denoiser
    torch.manual_seed(0)
    x = torch.randn(1, denoiser.config.in_channels, 2, 8, 8)
    text = torch.randn(1, 4, denoiser.config.text_dim)
    t = torch.tensor([500.0])
    with torch.no_grad():
        want = denoiser(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        assert set_attention_backend(denoiser, "flash_4") == "flash_4"
        got = denoiser(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        denoiser.set_attention_backend("native")
    assert len(calls) >= 2 and len(calls[0]) == 4  # self- and cross-attention of each block, (B, S, H, D)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_flash_4_without_the_package_fails_in_one_line(monkeypatch):
    import sys

    from anisora.accelerators.devices import check_attention_backend

    monkeypatch.setitem(sys.modules, "flash_attn", None)
    with pytest.raises(ConfigError, match="^accelerator.attention_backend: flash_4 needs the flash-attn-4 package"):
        check_attention_backend("flash_4")
