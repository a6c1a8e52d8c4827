"""The backbone adapter contract: everything a method needs from a model family, nothing more.

A method (SFT, distillation, preference tuning) talks to a backbone only through this class, so
adding a model family touches `backbones/` and `conf/model/` and never a method. Tensors follow
diffusers' video layout: pixels (B, 3, F, H, W) in [-1, 1]; latents (B, C, T, h, w).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from anisora.config.errors import ConfigError
from anisora.config.schema import SamplerConfig
from anisora.diffusion.objectives import FlowMatching, Objective


@dataclass
class Conditioning:
    """What the denoiser needs besides the noisy latent and the timestep."""

    text: torch.Tensor  # (B, L, D) text embeddings
    guide: torch.Tensor  # (B, Cg, T, h, w) guidance channels concatenated to the noisy latent
    image: torch.Tensor | None = None  # (B, N, Di) image-encoder tokens, when the family uses them

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        images = [p.image for p in parts]
        return Conditioning(
            torch.cat([p.text for p in parts]),
            torch.cat([p.guide for p in parts]),
            None if any(i is None for i in images) else torch.cat(images),
        )


#: attribute names of a diffusers denoiser's repeated block list
BLOCK_LISTS = ("blocks", "transformer_blocks")


@dataclass(frozen=True)
class SpeedupProfile:
    """What inference speed-ups need to know of a family's denoiser: which module outputs TaylorSeer extrapolates
    and how FasterCache finds its attention blocks and lays out its tensors."""

    taylorseer_modules: tuple[str, ...] = (r"blocks\.\d+\.(attn1|attn2|ffn)",)
    faster_cache: dict = field(default_factory=dict)


class BackboneAdapter(nn.Module, ABC):
    """One model family: latent codec, encoders, guidance layout, denoiser and objective."""

    #: what the denoiser predicts and how training noise works (build_backbone sets it from `model.objective`)
    objective: Objective = FlowMatching()
    #: module names and layouts the step caches need
    speedup_profile: SpeedupProfile = SpeedupProfile()
    #: the layout the family's transformer takes: (B, C, T, h, w) for Wan, (B, T, C, h, w) for CogVideoX
    dit_layout: str = "BCTHW"

    def stock_sampler(self, num_steps: int) -> SamplerConfig:
        """The sampler the family's stock diffusers pipeline runs (benchmarks compare against it)."""
        return SamplerConfig(name="unipc", num_steps=num_steps, shift=3.0, guidance_scale=5.0)
    #: pixel frames per latent frame after the first, and pixels per latent cell
    temporal_factor: int = 4
    spatial_factor: int = 8
    #: the denoiser's patch size (t, h, w) on the latent grid
    patch_size: tuple[int, int, int] = (1, 2, 2)
    latent_channels: int = 16
    #: latent frames after the first hold their difference to the first (the loss weighting needs to know)
    residual_latents: bool = False

    @abstractmethod
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, F, H, W) in [-1, 1] -> normalised latents (B, C, T, h, w)."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Normalised latents -> pixels in [-1, 1]; `num_frames`: the clip's length, for families whose latent
        grid pads frames."""

    @abstractmethod
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text embeddings (B, L, D); the empty prompt is the unconditional one."""

    @abstractmethod
    def condition(self, guide_video: torch.Tensor, guide_mask: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """The (G, M) pair -> the family's guidance channels on the latent grid (`generator`: for families whose
        guide encoding draws from the VAE posterior)."""

    def encode_image(self, guide_video: torch.Tensor, guide_mask: torch.Tensor) -> torch.Tensor | None:
        """Image-encoder tokens of the first guide frame, for families that use them."""
        return None

    @abstractmethod
    def denoise(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The model output for the objective (velocity for flow matching)."""

    def known_latents(self, guide_video: torch.Tensor, guide_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(values, known) on the latent grid for latent entries that the guide fixes exactly, for samplers
        that replace them at every step; None where the latent space mixes pixels (a real VAE)."""
        return None

    @property
    def active_denoiser(self) -> nn.Module:
        """The denoiser `denoise` runs: the backbone's own, or a role's copy inside `Roles.use(role)`."""
        return self.__dict__.get("_active_denoiser") or self.denoiser

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the method optimises."""
        return [self.denoiser]

    def denoiser_blocks(self, denoiser: nn.Module | None = None) -> nn.ModuleList:
        """The repeated transformer blocks of the denoiser (or of a role's copy of it; diffusers names them
        `blocks` or `transformer_blocks`): the unit of FSDP wrapping and of activation checkpointing."""
        denoiser = self.denoiser if denoiser is None else denoiser
        for name in BLOCK_LISTS:
            blocks = getattr(denoiser, name, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks):
                return blocks
        raise ConfigError("model", f"{type(denoiser).__name__} has no block list ({' or '.join(BLOCK_LISTS)})")

    def encoding_modules(self) -> list[nn.Module]:
        """Everything encode_video / encode_prompt / condition / encode_image use, i.e. all but the denoiser:
        latent encoding moves only these to the device."""
        return [m for m in self.children() if m is not self.denoiser]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, h, w) of a clip; raises a one-line ConfigError when the clip does not fit the grid."""
        self.check_clip_shape(num_frames, height, width)
        t = (num_frames - 1) // self.temporal_factor + 1
        return self.latent_channels, t, height // self.spatial_factor, width // self.spatial_factor

    def check_clip_shape(self, num_frames: int, height: int, width: int, prefix: str = "data") -> None:
        check_clip_shape(num_frames, height, width, self.temporal_factor, self.spatial_factor, self.patch_size[1],
                         prefix)

    def conditioning(self, prompts: list[str], guide_video: torch.Tensor, guide_mask: torch.Tensor,
                     generator: torch.Generator | list[torch.Generator] | None = None) -> Conditioning:
        """All conditioning for a batch in one call. `generator` (one, or one per sample) is for backbones whose
        guide latents are drawn rather than encoded deterministically (CogVideoX's VAE posterior); unused here."""
        return Conditioning(
            text=self.encode_prompt(prompts),
            guide=self.condition(guide_video, guide_mask),
            image=self.encode_image(guide_video, guide_mask),
        )


def check_clip_shape(num_frames: int, height: int, width: int, temporal_factor: int, spatial_factor: int,
                     patch: int, prefix: str = "data") -> None:
    """Fail fast on a frame count or a size the latent and patch grids cannot represent."""
    tf = temporal_factor
    if num_frames < 1 or (num_frames - 1) % tf:
        raise ConfigError(f"{prefix}.num_frames", f"must be {tf}n+1 (e.g. {tf + 1}, {4 * tf + 1}), got {num_frames}")
    grid = spatial_factor * patch
    for key, value in (("height", height), ("width", width)):
        if value <= 0 or value % grid:
            raise ConfigError(
                f"{prefix}.{key}",
                f"must be a positive multiple of {grid} (latent x{spatial_factor}, patch {patch}), got {value}",
            )
