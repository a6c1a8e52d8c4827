"""Exports for people: diffusers pipeline folders and LoRA safetensors that stock pipelines load as they are.

Lightning checkpoints are for resuming; these are what a user hands to `WanImageToVideoPipeline`,
`WanPipeline` or `CogVideoXImageToVideoPipeline` (`from_pretrained`, `load_lora_weights`).
"""

from __future__ import annotations

from pathlib import Path

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError
from anisora.diffusion.sampling import SamplerSpec, stock_scheduler
from anisora.io import atomic_write_folder


def stock_pipeline(backbone: BackboneAdapter, sampler: SamplerSpec | None = None):
    """The diffusers pipeline object holding this backbone's components (weights shared, not copied)."""
    from anisora.backbones.wan import WanI2VBackbone, WanT2VBackbone
    from anisora.backbones.wan_parts import WanVAECodec

    if isinstance(backbone, (WanI2VBackbone, WanT2VBackbone)):
        if not isinstance(backbone.codec, WanVAECodec):
            raise ConfigError("model", "only Wan models with the Wan VAE export as diffusers pipelines "
                              "(the tiny model's space-to-depth codec has no diffusers equivalent)")
        from diffusers import WanImageToVideoPipeline, WanPipeline

        sampler = sampler or SamplerSpec(name="unipc", num_steps=40, shift=3.0)
        parts = {"tokenizer": backbone.prompt_encoder.tokenizer, "text_encoder": backbone.prompt_encoder.encoder,
                 "transformer": backbone.active_denoiser, "vae": backbone.codec.vae,
                 "scheduler": stock_scheduler(sampler)}
        if isinstance(backbone, WanI2VBackbone):
            image = backbone.image_encoder
            return WanImageToVideoPipeline(image_encoder=image.encoder if image else None,
                                           image_processor=image.processor if image else None, **parts)
        return WanPipeline(**parts)
    to_pipeline = getattr(backbone, "stock_pipeline", None)
    if to_pipeline is None:
        raise ConfigError("model", f"{type(backbone).__name__} has no diffusers pipeline export")
    return to_pipeline(sampler)


def export_pipeline(backbone: BackboneAdapter, dst: Path | str, sampler: SamplerSpec | None = None,
                    overwrite: bool = False) -> Path:
    """`save_pretrained` folder of the whole pipeline, written atomically (a temporary sibling, then renamed)."""
    pipe, dst = stock_pipeline(backbone, sampler), Path(dst)
    check_empty(dst, overwrite)
    atomic_write_folder(dst, pipe.save_pretrained, overwrite, key="out")
    return dst


def check_empty(dst: Path, overwrite: bool) -> None:
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise ConfigError("out", f"{dst} exists and is not empty (set overwrite to replace it)")


def lora_state_dict(backbone: BackboneAdapter, adapter_name: str = "default") -> dict:
    """The denoiser's LoRA weights (peft names), as diffusers' `save_lora_weights` expects them."""
    from peft.utils import get_peft_model_state_dict

    if not getattr(backbone.denoiser, "peft_config", None):
        raise ConfigError("model.lora", "the model has no LoRA adapter to export")
    return get_peft_model_state_dict(backbone.denoiser, adapter_name=adapter_name)


def export_lora(backbone: BackboneAdapter, dst: Path | str, adapter_name: str = "default",
                overwrite: bool = False, sampler: SamplerSpec | None = None) -> Path:
    """LoRA safetensors that the stock pipeline's `load_lora_weights(dst)` loads unchanged; with `sampler`, also
    the scheduler that reproduces it (`dst/scheduler`, for `pipe.scheduler = X.from_pretrained(dst, "scheduler")`)."""
    pipe_cls, dst = type(stock_pipeline(backbone)), Path(dst)
    layers = lora_state_dict(backbone, adapter_name)
    metadata = backbone.denoiser.peft_config[adapter_name].to_dict()
    check_empty(dst, overwrite)

    def write(tmp: Path) -> None:
        pipe_cls.save_lora_weights(tmp, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata)
        if sampler is not None:
            stock_scheduler(sampler).save_pretrained(tmp / "scheduler")

    atomic_write_folder(dst, write, overwrite, key="out")
    return dst
