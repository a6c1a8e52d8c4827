"""Wan2.1's frozen parts around the DiT: the VAE as a normalised latent codec, and the CLIP image encoder.

Both follow diffusers' Wan pipelines step for step (mode of the latent distribution, per-channel
mean/std normalisation, CLIP penultimate hidden states), so frames sampled here equal the stock
pipelines' for the same weights.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from PIL import Image
from torch import nn


class WanVAECodec(nn.Module):
    """AutoencoderKLWan -> latents normalised by the VAE's own per-channel mean and std."""

    residual = False

    def __init__(self, vae: AutoencoderKLWan, tiling: bool = False) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.temporal_factor = int(cfg.scale_factor_temporal or 4)
        self.spatial_factor = int(cfg.scale_factor_spatial or 8)
        self.channels = int(cfg.z_dim)
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        self.set_tiling(tiling)

    def set_tiling(self, enabled: bool) -> None:
        """Tiled decode bounds activation memory at 480p and above (the DiT is not affected)."""
        if enabled:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        latents = dist.mode().float()
        return (latents - self.mean.float()) * self.inv_std.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() / self.inv_std.float() + self.mean.float()
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float()


def to_pil_images(frames: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images, quantised exactly as an 8-bit image file would be."""
    arr = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).cpu().numpy())) for a in arr]


class CLIPImageEncoder(nn.Module):
    """CLIP vision tower -> penultimate hidden states, the image tokens Wan2.1 I2V cross-attends to."""

    def __init__(self, encoder: nn.Module, processor) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.processor = processor

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) guide frames in [-1, 1] -> (N, tokens, dim)."""
        inputs = self.processor(images=to_pil_images(frames), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(next(self.encoder.parameters()).dtype)
        return self.encoder(**inputs, output_hidden_states=True).hidden_states[-2]
