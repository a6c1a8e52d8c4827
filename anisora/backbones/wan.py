"""The Wan2.1 I2V family adapter: 36-channel input = [noisy 16 | mask 4 | guide latent 16].

The tiny backbone and the real Wan2.1 checkpoints share this class; only the components differ.
"""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from anisora.backbones.base import BackboneAdapter, Conditioning
from anisora.guidance.fold import fold_mask_wan


class LatentCodec(Protocol):
    """Pixels <-> normalised latents (a VAE, or a cheap lossless stand-in)."""

    temporal_factor: int
    spatial_factor: int
    channels: int

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class WanI2VBackbone(BackboneAdapter):
    objective = "flow_match"

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
        self.patch_size = tuple(transformer.config.patch_size)
        expected = 2 * codec.channels + codec.temporal_factor
        if transformer.config.in_channels != expected:
            raise ValueError(
                f"model.transformer.in_channels: Wan I2V needs {expected} (2 x {codec.channels} latent +"
                f" {codec.temporal_factor} mask), got {transformer.config.in_channels}"
            )

    def trainable_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = [self.denoiser]
        if getattr(self.prompt_encoder, "trainable", False):
            modules.append(self.prompt_encoder.encoder)
        return modules

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(pixels)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        return self.prompt_encoder(prompts)

    def condition(self, guide_video: torch.Tensor, guide_mask: torch.Tensor) -> torch.Tensor:
        latent = self.codec.encode(guide_video)
        mask = fold_mask_wan(guide_mask, self.temporal_factor, latent.shape[-2], latent.shape[-1])
        return torch.cat([mask.to(latent.dtype), latent], dim=1)

    def denoise(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        hidden = torch.cat([noisy, cond.guide.to(noisy.dtype)], dim=1)
        return self.denoiser(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=cond.text,
            encoder_hidden_states_image=cond.image,
            return_dict=False,
        )[0]
