"""The Wan2.1 family: text-to-video (16-channel input) and I2V (36 = [noisy 16 | mask 4 | guide latent 16]).

The tiny backbone and the real Wan2.1 checkpoints share these classes; only the components differ.
"""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from anisora.backbones.base import BackboneAdapter, Conditioning, SpeedupProfile
from anisora.guidance.fold import fold_mask_wan


class LatentCodec(Protocol):
    """Pixels <-> normalised latents (a VAE, or a cheap lossless stand-in)."""

    temporal_factor: int
    spatial_factor: int
    channels: int

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class WanBackbone(BackboneAdapter):
    """What T2V and I2V share: codec, UMT5 prompts, the DiT call and the flow-matching objective."""

    speedup_profile = SpeedupProfile(
        taylorseer_modules=(r"blocks\.\d+\.(attn1|attn2|ffn)",),
        faster_cache={"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (-1, 681),
                      "spatial_attention_block_identifiers": (r"^blocks\.\d+\.attn1$",), "tensor_format": "BCFHW"})
    guide_channels = 0  # channels concatenated to the noisy latent

    def __init__(self, transformer: WanTransformer3DModel, codec: nn.Module, prompt_encoder: nn.Module,
                 image_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.denoiser = transformer
        self.codec = codec
        self.prompt_encoder = prompt_encoder
        self.image_encoder = image_encoder
        self.temporal_factor = codec.temporal_factor
        self.spatial_factor = codec.spatial_factor
        self.latent_channels = codec.channels
        self.residual_latents = bool(getattr(codec, "residual", False))
        self.patch_size = tuple(transformer.config.patch_size)
        expected = codec.channels + self.guide_channels_for(codec)
        if transformer.config.in_channels != expected:
            raise ValueError(
                f"model.in_channels: {type(self).__name__} needs {expected} input channels for a "
                f"{codec.channels}-channel latent, got {transformer.config.in_channels}"
            )

    @staticmethod
    def guide_channels_for(codec: LatentCodec) -> int:
        return 0

    def trainable_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = [self.denoiser]
        if getattr(self.prompt_encoder, "trainable", False):
            modules.append(self.prompt_encoder.encoder)
        return modules

    def encoders(self) -> list[nn.Module]:
        """The frozen encoders that run once per request (offloaded before the DiT runs)."""
        return [m for m in (self.prompt_encoder, self.image_encoder) if m is not None]

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(pixels)

    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        return self.codec.decode(latents)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        return self.prompt_encoder(prompts)

    def denoise(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        hidden = torch.cat([noisy, cond.guide.to(noisy.dtype)], dim=1) if cond.guide.shape[1] else noisy
        image = cond.image
        if image is not None and self.denoiser.config.pos_embed_seq_len is not None:
            image = image.reshape(-1, image.shape[1] // 2, image.shape[2])  # the DiT pairs them up again
        return self.active_denoiser(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=cond.text,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0]


class WanT2VBackbone(WanBackbone):
    """Wan2.1 text-to-video (e.g. T2V-1.3B): no guidance channels; guides are not accepted."""

    uses_guides = False

    def condition(self, guide_video: torch.Tensor, guide_mask: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, f, h, w = guide_video.shape
        t = (f - 1) // self.temporal_factor + 1
        return guide_video.new_zeros(b, 0, t, h // self.spatial_factor, w // self.spatial_factor)


class WanI2VBackbone(WanBackbone):
    """Wan2.1 I2V (AniSora V2/V3, and the tiny model): [noisy | 4 mask channels | guide latent]."""

    uses_guides = True

    @staticmethod
    def guide_channels_for(codec: LatentCodec) -> int:
        return codec.channels + codec.temporal_factor

    def condition(self, guide_video: torch.Tensor, guide_mask: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        latent = self.codec.encode(guide_video)
        mask = fold_mask_wan(guide_mask, self.temporal_factor, latent.shape[-2], latent.shape[-1])
        return torch.cat([mask.to(latent.dtype), latent], dim=1)

    def known_latents(self, guide_video: torch.Tensor, guide_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With a pixel-exact codec (the tiny model's space-to-depth), every guided pixel is a latent entry:
        the mask, encoded like pixels, says which."""
        if not getattr(self.codec, "pixel_exact", False):
            return None
        values = self.codec.encode(guide_video)
        known = self.codec.encode(guide_mask[:, None].expand_as(guide_video) * 2 - 1) > 0
        return values, known

    def encode_image(self, guide_video: torch.Tensor, guide_mask: torch.Tensor) -> torch.Tensor | None:
        """CLIP tokens of the first guided frame; a first+last-frame model (one whose image embedding has a
        positional table for two images) also gets the last guided frame, as Wan2.1-FLF2V does."""
        if self.image_encoder is None or self.denoiser.config.image_dim is None:
            return None
        given = guide_mask.flatten(2).amax(dim=2) > 0  # (B, F) frames with any guidance
        two = self.denoiser.config.pos_embed_seq_len is not None
        tokens = []
        for b in range(guide_video.shape[0]):
            frames = given[b].nonzero().flatten().tolist() or [0]
            picks = [frames[0], frames[-1]] if two else [frames[0]]
            emb = self.image_encoder(guide_video[b, :, picks].transpose(0, 1))
            tokens.append(emb.reshape(1, -1, emb.shape[-1]))
        return torch.cat(tokens).to(guide_video.dtype)
