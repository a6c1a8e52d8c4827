"""Step caches through diffusers' hooks: reuse parts of the previous step's computation when the
model's inputs barely changed. Each trades fidelity for speed; `benchmarks/infer_latency.py` reports both."""

from __future__ import annotations

from anisora.config.errors import ConfigError

KINDS = ("none", "first_block", "faster", "taylorseer", "mag")

# FasterCache as AniSora V1 ran it on CogVideoX: attention outputs reused every 2nd block-step and the
# unconditional branch every 5th step in the late (low-noise) half, 0.3 attention extrapolation weight.
FASTER_CACHE_COGVIDEOX = {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (-1, 681),
                          "low_frequency_weight_update_timestep_range": (99, 641),
                          "high_frequency_weight_update_timestep_range": (-1, 301),
                          "spatial_attention_block_identifiers": ("transformer_blocks",), "tensor_format": "BFCHW"}
FASTER_CACHE_WAN = {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (-1, 681),
                    "spatial_attention_block_identifiers": (r"^blocks\.\d+\.attn1$",), "tensor_format": "BCFHW"}
# TaylorSeer extrapolates the attention and feed-forward outputs of every block (names as diffusers has them)
TAYLORSEER_MODULES = {"flow_match": [r"blocks\.\d+\.(attn1|attn2|ffn)"],
                      "v_pred": [r"transformer_blocks\.\d+\.(attn1|ff)"]}


def config_for(backbone, spec):
    """The diffusers cache config for `spec.cache` on this backbone."""
    from diffusers.hooks import FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if spec.cache == "first_block":
        return FirstBlockCacheConfig(threshold=spec.cache_threshold)
    if spec.cache == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=spec.cache_interval,
                                     disable_cache_before_step=spec.cache_warmup_steps,
                                     cache_identifiers=TAYLORSEER_MODULES[backbone.objective])
    if spec.cache == "mag":
        return MagCacheConfig(threshold=spec.cache_threshold, mag_ratios=list(spec.mag_ratios),
                              num_inference_steps=len(spec.mag_ratios))
    if spec.cache == "faster":
        family = FASTER_CACHE_COGVIDEOX if backbone.objective == "v_pred" else FASTER_CACHE_WAN
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
