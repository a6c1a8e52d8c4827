"""Generation from a backbone: (G, M) + prompts + seeds -> uint8 video frames.

Training validation, infer.py and evaluate.py all sample through this one function.
"""

from __future__ import annotations

import numpy as np
import torch

from anisora.backbones.base import BackboneAdapter, Conditioning
from anisora.diffusion.sampling import SamplerSpec, sample


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8."""
    video = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).cpu().numpy()


def from_uint8_frames(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) or (B, F, H, W, 3) uint8 -> channels-first floats in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return x.permute(3, 0, 1, 2) if x.ndim == 4 else x.permute(0, 4, 1, 2, 3)


@torch.no_grad()
def generate_pixels(backbone: BackboneAdapter, prompts: list[str], guide_video: torch.Tensor,
                    guide_mask: torch.Tensor, seeds: list[int], spec: SamplerSpec, negative_prompt: str = "",
                    progress: bool = False, offload_encoders: bool = False) -> torch.Tensor:
    """Sample one clip per prompt -> decoded pixels (B, 3, F, H, W) in [-1, 1], before quantisation.

    G is (B, 3, F, H, W) in [-1, 1] and M is (B, F, H, W). With `offload_encoders` the frozen text
    and image encoders go to the CPU once their embeddings exist, before the DiT runs.
    """
    device = getattr(backbone, "execution_device", None) or next(backbone.denoiser.parameters()).device
    guide_video, guide_mask = guide_video.to(device), guide_mask.to(device)
    _, _, f, h, w = guide_video.shape
    latent_shape = backbone.latent_shape(f, h, w)
    # one generator per clip: a backbone whose guide latents are drawn (CogVideoX's VAE posterior) draws them
    # first and the sampler continues it, in the stock pipeline's order, so a seed gives the pipeline's video
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    cond = backbone.conditioning(prompts, guide_video, guide_mask, generator=generators)
    uncond = None
    if spec.guidance_scale != 1.0:
        negative = backbone.encode_prompt([negative_prompt] * len(prompts))
        uncond = Conditioning(text=negative, guide=cond.guide, image=cond.image)  # same guide, no caption
    if offload_encoders:
        offload(backbone)
    known = backbone.known_latents(guide_video, guide_mask) if spec.replace_known else None
    latents = sample(backbone, cond, uncond, latent_shape, seeds, spec, progress=progress, known=known,
                     generators=generators)
    return backbone.decode_latents(latents, num_frames=f)


def offload(backbone: BackboneAdapter) -> None:
    """Move the frozen encoders to the CPU and release their device memory."""
    encoders = backbone.encoders() if hasattr(backbone, "encoders") else []
    for module in encoders:
        module.to("cpu")
    if encoders:
        from anisora.accelerators.devices import empty_cache

        empty_cache()


def generate(backbone: BackboneAdapter, prompts: list[str], guide_video: torch.Tensor, guide_mask: torch.Tensor,
             seeds: list[int], spec: SamplerSpec, negative_prompt: str = "", progress: bool = False,
             offload_encoders: bool = False) -> np.ndarray:
    """`generate_pixels` -> (B, F, H, W, 3) uint8 frames."""
    pixels = generate_pixels(backbone, prompts, guide_video, guide_mask, seeds, spec, negative_prompt, progress,
                             offload_encoders)
    return to_uint8_frames(pixels)
