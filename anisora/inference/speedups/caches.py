"""Step caches through diffusers' hooks: reuse parts of the previous step's computation when the
model's inputs barely changed. Each trades fidelity for speed; `benchmarks/infer_latency.py` reports both."""

from __future__ import annotations

import logging
import re

import torch

from anisora.config.errors import ConfigError
from anisora.config.schema import CACHE_KINDS

log = logging.getLogger("anisora.speedup")

KINDS = CACHE_KINDS  # the schema names them (speedup.cache)
TAYLOR_FACTORS = 2  # diffusers' default max_order 1: value and first difference per cached output

def config_for(backbone, spec):
    """The diffusers cache config for `spec.cache` on this backbone."""
    from diffusers.hooks import FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if spec.cache == "first_block":
        return FirstBlockCacheConfig(threshold=spec.cache_threshold)
    if spec.cache == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=spec.cache_interval,
                                     disable_cache_before_step=spec.cache_warmup_steps,
                                     cache_identifiers=list(backbone.speedup_profile.taylorseer_modules))
    if spec.cache == "taylorseer_lite":  # blocks skipped on predicted steps, only the output projection predicted
        return TaylorSeerCacheConfig(cache_interval=spec.cache_interval,
                                     disable_cache_before_step=spec.cache_warmup_steps, use_lite_mode=True)
    if spec.cache == "mag":
        return MagCacheConfig(threshold=spec.cache_threshold, mag_ratios=list(spec.mag_ratios),
                              num_inference_steps=len(spec.mag_ratios))
    if spec.cache == "faster":
        family = dict(backbone.speedup_profile.faster_cache)
        identifiers = ["hidden_states", "encoder_hidden_states", "timestep"]
        if getattr(backbone, "image_encoder", None) is not None:
            identifiers.append("encoder_hidden_states_image")
        return FasterCacheConfig(**family, attention_weight_callback=lambda _: 0.3,
                                 current_timestep_callback=lambda: backbone.current_timestep,
                                 _unconditional_conditional_input_kwargs_identifiers=identifiers)
    raise ConfigError("speedup.cache", f"expected one of {', '.join(KINDS)}; got {spec.cache!r}")


def enable(backbone, spec) -> None:
    """Hooks on the denoiser. FasterCache needs both CFG branches in one batch, unconditional first, and
    the current timestep: the sampling loops provide both when `backbone.cfg_uncond_first` is set."""
    if spec.cache == "first_block":
        from anisora.inference.speedups.compile import repeated_blocks

        if len(repeated_blocks(backbone.denoiser)) < 2:
            raise ConfigError("speedup.cache", "first_block needs a model with at least 2 transformer blocks")
    backbone.current_timestep = 1000
    if spec.cache == "faster":
        backbone.cfg_uncond_first = True
    backbone.denoiser.enable_cache(config_for(backbone, spec))


def taylorseer_bytes(backbone, latent_shape: tuple[int, int, int, int], rows: int) -> tuple[int, str]:
    """Bytes of Taylor factors full TaylorSeer keeps for one clip of `latent_shape` with `rows` batch rows (CFG
    doubles them): every cached module's output, twice. Returns the bytes and how they add up."""
    denoiser = backbone.denoiser
    cfg = denoiser.config
    patterns = backbone.speedup_profile.taylorseer_modules
    modules = sum(1 for name, _ in denoiser.named_modules() if any(re.fullmatch(p, name) for p in patterns))
    patch = cfg.patch_size
    p_t, p_s = (patch[0], patch[-1]) if isinstance(patch, (tuple, list)) else (cfg.get("patch_size_t") or 1, patch)
    _, t, h, w = latent_shape
    tokens = -(-t // p_t) * (h // p_s) * (w // p_s)
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    bytes_ = modules * TAYLOR_FACTORS * rows * tokens * hidden * 2  # bf16 factors
    return bytes_, f"{modules} cached outputs x {TAYLOR_FACTORS} factors x {rows} rows x {tokens} tokens x {hidden}"


def check_cache_memory(backbone, spec, latent_shape: tuple[int, int, int, int], rows: int,
                       device: torch.device) -> None:
    """Refuse (or, with best_effort, drop) full TaylorSeer when its factors alone exceed the GPU, before sampling
    starts: on Wan-14B at 480x832x81 with CFG they need about 150 GiB."""
    from anisora.accelerators.devices import total_memory_bytes

    total = total_memory_bytes(device)
    if spec.cache != "taylorseer" or total is None:
        return
    need, parts = taylorseer_bytes(backbone, latent_shape, rows)
    if need <= total:
        return
    why = (f"taylorseer keeps {need / 2**30:.0f} GiB of Taylor factors for this clip ({parts}), more than this "
           f"GPU's {total / 2**30:.0f} GiB; use speedup.cache=taylorseer_lite (output projection only) or first_block")
    if not spec.best_effort:
        raise ConfigError("speedup.cache", why)
    log.warning("skipping speedup.cache (best_effort): %s", why)
    backbone.denoiser.disable_cache()
