"""The tiny backbone: Wan2.1's I2V code path at CPU size.

Same WanTransformer3DModel, mask folding and conditioning as Wan2.1-14B; the VAE is replaced by a
lossless space-to-depth codec (same temporal x4 grouping with the first frame alone), and the text
encoder is a small UMT5 over a word-level vocabulary built offline with `tokenizers`.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from anisora.backbones.base import BackboneAdapter
from anisora.backbones.specs import spec_class
from anisora.backbones.text_encoders import UMT5PromptEncoder
from anisora.backbones.wan import WanI2VBackbone
from anisora.config.schema import TinyModelConfig
from anisora.data import synthetic

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
TEMPORAL_FACTOR = 4  # as Wan's VAE: frame 0 alone, then groups of 4
PATCH = (1, 2, 2)  # the DiT's (time, height, width) patch


class SpaceToDepthCodec(nn.Module):
    """A lossless 'VAE': frame 0 alone, then groups of `temporal_factor` frames, each folded with
    `spatial_factor` x `spatial_factor` pixel blocks into channels (like Wan's VAE strides).

    With `residual`, latent frames after the first hold their difference to the first (whose slot
    repeats frame 0 in the same channel layout): like Wan's causal VAE, later latents depend on
    frame 0, and a static background is zero there, so the loss is spent on what moves."""

    def __init__(self, spatial_factor: int = 2, temporal_factor: int = 4, scale: float = 1.0,
                 residual: bool = False) -> None:
        super().__init__()
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.channels = 3 * temporal_factor * spatial_factor**2
        self.scale = scale
        self.residual = residual
        self.pixel_exact = not residual  # each latent entry is one pixel of one frame

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = pixels.shape
        tf, s = self.temporal_factor, self.spatial_factor
        if (f - 1) % tf or h % s or w % s:
            raise ValueError(f"clip of {f} frames at {h}x{w} does not fit the {tf}n+1 / x{s} latent grid")
        x = torch.cat([pixels[:, :, :1].expand(b, c, tf, h, w), pixels[:, :, 1:]], dim=2)
        t = x.shape[2] // tf
        x = x.reshape(b, c, t, tf, h // s, s, w // s, s)
        x = x.permute(0, 3, 1, 5, 7, 2, 4, 6)  # (B, tf, C, s, s, T, h, w)
        x = x.reshape(b, self.channels, t, h // s, w // s)
        if self.residual:
            x = torch.cat([x[:, :, :1], x[:, :, 1:] - x[:, :, :1]], dim=2)
        return x * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = latents.shape
        tf, s = self.temporal_factor, self.spatial_factor
        x = latents / self.scale
        if self.residual:
            x = torch.cat([x[:, :, :1], x[:, :, 1:] + x[:, :, :1]], dim=2)
        x = x.reshape(b, tf, 3, s, s, t, h, w)
        x = x.permute(0, 2, 5, 1, 6, 3, 7, 4).reshape(b, 3, t, tf, h * s, w * s)
        first = x[:, :, 0].mean(dim=2, keepdim=True)  # the repeated first frame, averaged
        rest = x[:, :, 1:].reshape(b, 3, (t - 1) * tf, h * s, w * s)
        return torch.cat([first, rest], dim=2)


def world_vocabulary() -> list[str]:
    """Every word the synthetic world's captions use, plus digits and punctuation."""
    words = {"a", "moves", "across", "the", "aesthetic", "motion", "score", "there", "is", "no", "text", "in",
             "video", "and", "of", "fast", "slow", "still", ".", ",", ":"}
    words |= set(synthetic.DIRECTIONS) | set(synthetic.SPRITE_COLOURS) | set(synthetic.SUBJECTS)
    words |= set(synthetic.SCENES) | {str(d) for d in range(10)}
    return sorted(words)


def word_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that needs no download; unknown words map to <unk>."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary:
        vocab.setdefault(word, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_input_names=["input_ids", "attention_mask"])


TinyBackboneSpec = spec_class("TinyBackboneSpec", TinyModelConfig, __name__,
                              "The tiny model's network: TinyModelConfig's fields and defaults.")


def build(dtype: torch.dtype = torch.float32, **fields) -> WanI2VBackbone:
    """Hydra target of `conf/model/tiny.yaml`: keyword arguments are TinyBackboneSpec fields; `dtype` is the
    DiT's and text encoder's (the codec has no weights)."""
    return cast_networks(build_tiny_backbone(TinyBackboneSpec(**fields)), dtype)


def cast_networks(backbone: BackboneAdapter, dtype: torch.dtype) -> BackboneAdapter:
    """A tiny backbone's DiT and text encoder in `dtype` (its codec has no weights); nn.Module's cast casts every
    weight, where diffusers' `.to` would warn of the modules it keeps in fp32."""
    nn.Module.to(backbone.denoiser, dtype)
    backbone.prompt_encoder.to(dtype)
    return backbone


def build_tiny_backbone(spec: TinyBackboneSpec) -> WanI2VBackbone:
    """Builds the components from `init_seed`, so the same spec always gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        codec = SpaceToDepthCodec(spec.spatial_factor, TEMPORAL_FACTOR, spec.latent_scale, spec.residual_latents)
        tokenizer = word_tokenizer(world_vocabulary())
        encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=spec.text_dim, d_kv=spec.text_dim // spec.text_heads,
            d_ff=2 * spec.text_dim, num_layers=spec.text_layers, num_heads=spec.text_heads,
            relative_attention_num_buckets=8, dropout_rate=0.0,
        )).eval().requires_grad_(False)
        transformer = WanTransformer3DModel(
            patch_size=PATCH, num_attention_heads=spec.num_attention_heads,
            attention_head_dim=spec.attention_head_dim, in_channels=2 * codec.channels + TEMPORAL_FACTOR,
            out_channels=codec.channels, text_dim=spec.text_dim, freq_dim=spec.freq_dim, ffn_dim=spec.ffn_dim,
            num_layers=spec.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=64,
        )
    prompt_encoder = UMT5PromptEncoder(tokenizer, encoder, spec.max_sequence_length, spec.train_text_encoder)
    return WanI2VBackbone(transformer, codec, prompt_encoder)
