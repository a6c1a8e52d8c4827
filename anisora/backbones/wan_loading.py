"""Building Wan2.1 backbones: from a diffusers-format folder on disk (offline), or with random weights
at any size (tests, benchmarks, training from scratch). Hydra target of `conf/model/wan*.yaml`."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    UMT5Config,
    UMT5EncoderModel,
)

from anisora.backbones.specs import spec_class
from anisora.backbones.text_encoders import UMT5PromptEncoder
from anisora.backbones.wan import WanBackbone, WanI2VBackbone, WanT2VBackbone
from anisora.backbones.wan_parts import CLIPImageEncoder, WanVAECodec
from anisora.config.errors import ConfigError
from anisora.config.schema import WanModelConfig

log = logging.getLogger("anisora.backbones")

TEXT_PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
IMAGE_PARTS = ("image_encoder", "image_processor")
PATCH = (1, 2, 2)  # the DiT's (time, height, width) patch
VAE_TEMPORAL, VAE_SPATIAL = 4, 8  # Wan2.1's VAE: frame 0 alone then groups of 4; 8x8 pixels per latent


WanSpec = spec_class("WanSpec", WanModelConfig, __name__,
                     "A Wan2.1 model: where its weights are, or the architecture to build with random weights "
                     "(WanModelConfig's fields and defaults; a folder's own config.json wins over them).")


def build(dtype: torch.dtype = torch.float32, **values) -> WanBackbone:
    """Hydra target: keyword arguments are WanSpec fields (non-network keys are dropped upstream);
    `dtype` is what a folder's DiT, text and image encoders load in (the VAE stays fp32)."""
    known = {f.name for f in fields(WanSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"unknown key; Wan models take {sorted(known)}")
    spec = WanSpec(**values)
    return load_wan(spec, dtype) if spec.ckpt else build_random_wan(spec, dtype=dtype)


def missing_parts(folder: Path, parts: tuple[str, ...]) -> list[str]:
    return [p for p in parts if not (folder / p).is_dir()]


def check_wan_folder(spec: WanSpec) -> Path:
    """Fail before loading anything: the folder exists and holds every part the variant needs."""
    folder = Path(spec.ckpt).expanduser()
    if spec.transformer and not Path(spec.transformer).expanduser().exists():
        raise ConfigError("model.transformer", f"{spec.transformer} does not exist")
    if not folder.is_dir():
        raise ConfigError("ckpt", f"{folder} is not a directory (expected a diffusers-format Wan folder)")
    needed = TEXT_PARTS[1:] if spec.transformer else TEXT_PARTS
    missing = missing_parts(folder, needed)
    if missing:
        raise ConfigError("ckpt", f"{folder / missing[0]} is missing: a diffusers Wan folder needs "
                          f"{', '.join(p + '/' for p in TEXT_PARTS)} (missing: {', '.join(missing)})")
    if spec.variant == "i2v" and not spec.transformer and image_dim_of(folder) is not None:
        missing = missing_parts(folder, IMAGE_PARTS)
        if missing:
            raise ConfigError("ckpt", f"{folder / missing[0]} is missing: this I2V transformer uses CLIP image "
                              f"tokens, so the folder needs image_encoder/ and image_processor/")
    return folder


def image_dim_of(folder: Path) -> int | None:
    config = folder / "transformer" / "config.json"
    if not config.is_file():
        raise ConfigError("ckpt", f"{config} is missing (the transformer folder has no config.json)")
    return json.loads(config.read_text()).get("image_dim")


def load_wan(spec: WanSpec, dtype: torch.dtype = torch.float32) -> WanBackbone:
    """All parts from a diffusers-format folder, local files only."""
    folder = check_wan_folder(spec)
    kw = {"local_files_only": True}
    source = Path(spec.transformer) if spec.transformer else folder / "transformer"
    transformer = load_transformer(source, dtype, spec.attention_head_dim)
    vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32, **kw)
    encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype, **kw)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", **kw)
    image_encoder = None
    if spec.variant == "i2v" and transformer.config.image_dim is not None:
        missing = missing_parts(folder, IMAGE_PARTS)
        if missing:
            raise ConfigError("ckpt", f"{folder / missing[0]} is missing: this I2V transformer uses CLIP image "
                              f"tokens, so the folder needs image_encoder/ and image_processor/")
        image_encoder = CLIPImageEncoder(
            CLIPVisionModel.from_pretrained(folder / "image_encoder", dtype=dtype, **kw),
            CLIPImageProcessorPil.from_pretrained(folder / "image_processor", **kw),
        )
    return assemble(spec, transformer, vae, encoder, tokenizer, image_encoder)


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def load_transformer(path: Path, dtype: torch.dtype, head_dim: int = 128) -> WanTransformer3DModel:
    """A diffusers transformer folder, or Wan's original layout converted in memory (its head width is not
    in the weights: Wan's released models all use 128, `model.attention_head_dim`)."""
    path = path.expanduser()
    if not path.exists():
        raise ConfigError("model.transformer", f"{path} does not exist")
    if (path / "config.json").is_file():
        return WanTransformer3DModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    from anisora.backbones.convert import load_original

    model, _ = load_original("wan-original", path, dtype=DTYPE_NAMES.get(dtype, "keep"), log=log.info,
                             head_dim=head_dim)
    return model.eval()


def build_random_wan(spec: WanSpec, tokenizer=None, dtype: torch.dtype | None = None) -> WanBackbone:
    """Random weights at the spec's sizes (deterministic per init_seed); a word-level tokenizer unless given.
    The DiT and the encoders take `dtype` as each is built, as loading does (the VAE stays fp32): only one part
    is ever in fp32 at once, so Wan-14B's LoRA base (65.6 GB in fp32) and UMT5-XXL (22.7 GB) fit an 80 GB card.
    No `dtype` keeps torch's default dtype, so a build under a bf16 default is never cast up to fp32 (Wan-14B
    and UMT5-XXL in fp32 fill an 80 GB card before the first step)."""
    from anisora.backbones.tiny import word_tokenizer, world_vocabulary

    dtype = dtype or torch.get_default_dtype()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        transformer = nn.Module.to(WanTransformer3DModel(
            patch_size=PATCH, num_attention_heads=spec.num_attention_heads,
            attention_head_dim=spec.attention_head_dim, in_channels=spec.in_channels,
            out_channels=spec.out_channels, text_dim=spec.text_dim, freq_dim=spec.freq_dim, ffn_dim=spec.ffn_dim,
            num_layers=spec.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            image_dim=spec.image_dim if spec.variant == "i2v" else None,
            added_kv_proj_dim=spec.added_kv_proj_dim if spec.variant == "i2v" else None,
            pos_embed_seq_len=spec.pos_embed_seq_len, rope_max_seq_len=spec.rope_max_seq_len,
        ), dtype)  # nn.Module's cast: every weight, as the frozen-weight cast of a LoRA base does anyway
        vae = AutoencoderKLWan(base_dim=spec.vae_base_dim, z_dim=spec.out_channels)
        tokenizer = tokenizer or word_tokenizer(world_vocabulary())
        encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=max(spec.text_vocab, len(tokenizer)), d_model=spec.text_dim,
            d_kv=spec.text_dim // spec.text_heads, d_ff=spec.text_ff, num_layers=spec.text_layers,
            num_heads=spec.text_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        )).to(dtype)
        image_encoder = None
        if spec.variant == "i2v" and spec.image_dim is not None:
            vision = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=spec.image_dim, intermediate_size=spec.clip_ff, num_hidden_layers=spec.clip_layers,
                num_attention_heads=spec.clip_heads, image_size=spec.clip_image_size, patch_size=spec.clip_patch,
                hidden_act="gelu",
            )).to(dtype)
            size = spec.clip_image_size
            processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
            image_encoder = CLIPImageEncoder(vision, processor)
    return assemble(spec, transformer, vae, encoder, tokenizer, image_encoder)


def assemble(spec: WanSpec, transformer, vae, encoder, tokenizer, image_encoder) -> WanBackbone:
    prompt_encoder = UMT5PromptEncoder(tokenizer, encoder.eval(), spec.max_sequence_length, spec.train_text_encoder)
    codec = WanVAECodec(vae, tiling=spec.vae_tiling)
    cls = WanI2VBackbone if spec.variant == "i2v" else WanT2VBackbone
    backbone = cls(transformer, codec, prompt_encoder, image_encoder)
    log.info("parameters: %s", ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in parameter_counts(backbone).items()))
    return backbone


def parameter_counts(backbone: WanBackbone) -> dict[str, int]:
    """Parameters per component (the DiT count includes Wan2.1 I2V's image projection)."""
    parts = {"dit": backbone.denoiser, "vae": backbone.codec, "text_encoder": backbone.prompt_encoder}
    if backbone.image_encoder is not None:
        parts["image_encoder"] = backbone.image_encoder
    return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
