"""The tiny CogVideoX: CogVideoX-5B I2V's code path (AniSora V1) at CPU size.

The same CogVideoXI2VBackbone as the real model (guide frames encoded one at a time into their latent slots,
[noisy | guide] channels, T5 prompts, v-prediction on a zero-terminal-SNR schedule) over a real diffusers
CogVideoXTransformer3DModel at tiny size. The VAE is replaced by tiny.py's lossless space-to-depth codec and the
T5 encoder is small and random over the offline word-level vocabulary, so it trains on the synthetic world.
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel
from transformers import T5Config, T5EncoderModel

from anisora.backbones.cogvideox import CogVideoXI2VBackbone, T5PromptEncoder
from anisora.backbones.specs import spec_class
from anisora.backbones.tiny import SpaceToDepthCodec, cast_networks, word_tokenizer, world_vocabulary
from anisora.config.errors import ConfigError
from anisora.config.schema import TinyCogVideoXModelConfig
from anisora.diffusion.v_prediction import VSchedule

TEMPORAL_FACTOR = 4  # as CogVideoX's causal VAE: frame 0 alone, then groups of 4


class CogVideoXPixelCodec(SpaceToDepthCodec):
    """SpaceToDepthCodec with the calls CogVideoXI2VBackbone makes of its VAE codec.

    Nothing is drawn (the codec is deterministic, so `generator` is unused), and a guide frame is encoded alone
    as a 1-frame video, as CogVideoX encodes its guide images: the frame fills the whole latent frame."""

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return super().encode(pixels)

    def encode_guide_frame(self, frame: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One frame (1, 3, 1, H, W) -> its guide latent (1, C, 1, h, w)."""
        return super().encode(frame)


TinyCogVideoXSpec = spec_class("TinyCogVideoXSpec", TinyCogVideoXModelConfig, __name__,
                               "The tiny CogVideoX's network: TinyCogVideoXModelConfig's fields and defaults.")


def build(dtype: torch.dtype = torch.float32, **fields) -> CogVideoXI2VBackbone:
    """Hydra target of `conf/model/tiny_cogvideox.yaml`: keyword arguments are TinyCogVideoXSpec fields; `dtype`
    is the DiT's and text encoder's (the codec has no weights)."""
    return cast_networks(build_tiny_cogvideox(TinyCogVideoXSpec(**fields)), dtype)


def check_spec(spec: TinyCogVideoXSpec) -> None:
    """One-line errors for sizes the layers would refuse later with a bare assertion."""
    if spec.attention_head_dim % 16:
        raise ConfigError("model.attention_head_dim", "must be a multiple of 16 (the 3D rotary embedding gives "
                          f"a quarter to time and 3/8 each to height and width), got {spec.attention_head_dim}")
    if spec.text_dim % spec.text_heads:
        raise ConfigError("model.text_dim", f"must be a multiple of model.text_heads ({spec.text_heads}), "
                          f"got {spec.text_dim}")


def tiny_transformer(spec: TinyCogVideoXSpec, latent_channels: int) -> CogVideoXTransformer3DModel:
    """Rotary embeddings only (no learned positional table), so any clip size on the patch grid works."""
    return CogVideoXTransformer3DModel(
        num_attention_heads=spec.num_attention_heads, attention_head_dim=spec.attention_head_dim,
        in_channels=2 * latent_channels, out_channels=latent_channels, time_embed_dim=spec.time_embed_dim,
        text_embed_dim=spec.text_dim, num_layers=spec.num_layers, sample_height=spec.sample_height,
        sample_width=spec.sample_width, sample_frames=spec.sample_frames, patch_size=spec.patch_size,
        temporal_compression_ratio=TEMPORAL_FACTOR, max_text_seq_length=spec.max_sequence_length,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
    )


def tiny_t5(spec: TinyCogVideoXSpec, vocab_size: int) -> T5EncoderModel:
    """A small random T5 v1.1-style encoder (gated GELU, as CogVideoX's T5 XXL)."""
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=spec.text_dim, d_kv=spec.text_dim // spec.text_heads, d_ff=spec.text_ff,
        num_layers=spec.text_layers, num_heads=spec.text_heads, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    ))


def build_tiny_cogvideox(spec: TinyCogVideoXSpec) -> CogVideoXI2VBackbone:
    """Builds the components from `init_seed`, so the same spec always gives the same weights."""
    check_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        codec = CogVideoXPixelCodec(spec.spatial_factor, TEMPORAL_FACTOR, spec.latent_scale)
        tokenizer = word_tokenizer(world_vocabulary())
        encoder = tiny_t5(spec, len(tokenizer))
        transformer = tiny_transformer(spec, codec.channels)
    prompt_encoder = T5PromptEncoder(tokenizer, encoder, spec.max_sequence_length, spec.empty_prompt)
    schedule = VSchedule(snr_shift_scale=spec.snr_shift_scale)
    return CogVideoXI2VBackbone(transformer, codec, prompt_encoder, schedule)
