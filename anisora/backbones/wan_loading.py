"""Building Wan2.1 backbones: from a diffusers-format folder on disk (offline), or with random weights
at any size (tests, benchmarks, training from scratch). Hydra target of `conf/model/wan*.yaml`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    UMT5Config,
    UMT5EncoderModel,
)

from anisora.backbones.text_encoders import UMT5PromptEncoder
from anisora.backbones.wan import WanBackbone, WanI2VBackbone, WanT2VBackbone
from anisora.backbones.wan_parts import CLIPImageEncoder, WanVAECodec
from anisora.config.errors import ConfigError

log = logging.getLogger("anisora.backbones")

TEXT_PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
IMAGE_PARTS = ("image_encoder", "image_processor")


@dataclass
class WanSpec:
    """A Wan2.1 model: where its weights are, or the architecture to build with random weights."""

    variant: str = "i2v"  # t2v | i2v
    ckpt: str | None = None  # diffusers-format folder: transformer/ vae/ text_encoder/ tokenizer/ [image_encoder/ ...]
    transformer: str | None = None  # DiT weights to use instead of ckpt's: Wan original layout (AniSora V2/V3
    #                                 releases: a file or a folder of shards) or a diffusers transformer folder
    # DiT (used when ckpt is None; a folder's own config.json wins otherwise)
    num_layers: int = 40
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    ffn_dim: int = 13824
    in_channels: int = 36
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    image_dim: int | None = 1280
    added_kv_proj_dim: int | None = 5120  # Wan2.1 I2V's own k_img/v_img projections of the CLIP tokens (= dim)
    pos_embed_seq_len: int | None = None  # 2 x 257 for first+last-frame (FLF2V) models
    rope_max_seq_len: int = 1024
    # UMT5-XXL text encoder
    max_sequence_length: int = 512
    text_layers: int = 24
    text_heads: int = 64
    text_ff: int = 10240
    text_vocab: int = 256384
    # open-clip XLM-RoBERTa ViT-H/14 vision tower (257 tokens of 1280)
    clip_layers: int = 32
    clip_heads: int = 16
    clip_ff: int = 5120
    clip_image_size: int = 224
    clip_patch: int = 14
    # VAE and memory policy
    vae_base_dim: int = 96
    vae_tiling: bool = False
    train_text_encoder: bool = False
    init_seed: int = 0


def build(dtype: torch.dtype = torch.float32, **values) -> WanBackbone:
    """Hydra target: keyword arguments are WanSpec fields (non-network keys are dropped upstream);
    `dtype` is what a folder's DiT, text and image encoders load in (the VAE stays fp32)."""
    known = {f.name for f in fields(WanSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"unknown key; Wan models take {sorted(known)}")
    spec = WanSpec(**values)
    return load_wan(spec, dtype) if spec.ckpt else build_random_wan(spec)


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
    from anisora.tasks.convert import load_original

    model, _ = load_original("wan-original", path, dtype=DTYPE_NAMES.get(dtype, "keep"), log=log.info,
                             head_dim=head_dim)
    return model.eval()


def build_random_wan(spec: WanSpec, tokenizer=None) -> WanBackbone:
    """Random weights at the spec's sizes (deterministic per init_seed); a word-level tokenizer unless given."""
    from anisora.backbones.tiny import word_tokenizer, world_vocabulary

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=spec.num_attention_heads,
            attention_head_dim=spec.attention_head_dim, in_channels=spec.in_channels,
            out_channels=spec.out_channels, text_dim=spec.text_dim, freq_dim=spec.freq_dim, ffn_dim=spec.ffn_dim,
            num_layers=spec.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            image_dim=spec.image_dim if spec.variant == "i2v" else None,
            added_kv_proj_dim=spec.added_kv_proj_dim if spec.variant == "i2v" else None,
            pos_embed_seq_len=spec.pos_embed_seq_len, rope_max_seq_len=spec.rope_max_seq_len,
        )
        vae = AutoencoderKLWan(base_dim=spec.vae_base_dim, z_dim=spec.out_channels)
        tokenizer = tokenizer or word_tokenizer(world_vocabulary())
        encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=max(spec.text_vocab, len(tokenizer)), d_model=spec.text_dim,
            d_kv=spec.text_dim // spec.text_heads, d_ff=spec.text_ff, num_layers=spec.text_layers,
            num_heads=spec.text_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        ))
        image_encoder = None
        if spec.variant == "i2v" and spec.image_dim is not None:
            vision = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=spec.image_dim, intermediate_size=spec.clip_ff, num_hidden_layers=spec.clip_layers,
                num_attention_heads=spec.clip_heads, image_size=spec.clip_image_size, patch_size=spec.clip_patch,
                hidden_act="gelu",
            ))
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
