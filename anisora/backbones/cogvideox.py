"""The CogVideoX I2V family (AniSora V1 = CogVideoX-5B I2V): [noisy latent 16 | guide latent 16] = 32 channels.

Guide frames are VAE-encoded one at a time as 1-frame videos and placed at their latent slots
(pixel frame 0 -> slot 0, frame i -> (i - 1) // 4 + 1), zeros elsewhere; there is no mask channel. The
objective is v-prediction on a zero-terminal-SNR DDPM schedule (anisora.diffusion.v_prediction).

Every step follows diffusers' CogVideoXImageToVideoPipeline (T5 embeddings of max-length-padded prompts, the
guide latent drawn from the VAE's latent distribution, rotary embeddings and the `ofs` embedding computed the
same way), so with the same components and generator a first-frame clip equals the stock pipeline's.
CogVideoX's transformer takes (B, T, C, h, w); this adapter keeps diffusers' (B, C, T, h, w) outside.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid
from torch import nn
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from anisora.backbones.base import BackboneAdapter, Conditioning, SpeedupProfile
from anisora.backbones.specs import choices_of, spec_class
from anisora.config.errors import ConfigError
from anisora.config.schema import CogVideoXModelConfig
from anisora.diffusion.objectives import VPrediction
from anisora.diffusion.sampling import SamplerSpec
from anisora.diffusion.v_prediction import DEFAULT_SCHEDULE, VSchedule, build_v_scheduler

PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
LATENT_SAMPLING = choices_of(CogVideoXModelConfig, "latent_sampling")
EMPTY_PROMPT = choices_of(CogVideoXModelConfig, "empty_prompt")
VAE_DTYPES = choices_of(CogVideoXModelConfig, "vae_dtype")
OFS_VALUE = 2.0  # the `ofs` value CogVideoX 1.5 I2V pipelines pass
VAE_TEMPORAL = 4  # pixel frames per latent frame after the first (CogVideoX's 3D causal VAE)

Generators = torch.Generator | list[torch.Generator] | None


def _pick(generator: Generators, index: int) -> torch.Generator | None:
    return generator[index] if isinstance(generator, list) else generator


class T5PromptEncoder(nn.Module):
    """Tokenizer + frozen T5 encoder; prompts padded to `max_sequence_length` and encoded without an attention
    mask, as CogVideoX pipelines do. With `empty_prompt="zeros"` an empty prompt gives zero embeddings (the
    unconditional text of AniSora V1's SAT code, in training and at inference)."""

    def __init__(self, tokenizer, encoder: nn.Module, max_sequence_length: int = 226,
                 empty_prompt: str = "encode") -> None:
        super().__init__()
        if empty_prompt not in EMPTY_PROMPT:
            raise ConfigError("model.empty_prompt", f"expected one of {list(EMPTY_PROMPT)}, got {empty_prompt!r}")
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.max_sequence_length = max_sequence_length
        self.empty_prompt = empty_prompt

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        hidden = self.encoder(ids)[0]
        if self.empty_prompt == "zeros":
            keep = torch.tensor([bool(p.strip()) for p in prompts], device=hidden.device)
            hidden = hidden * keep.view(-1, 1, 1).to(hidden.dtype)
        return hidden


class CogVideoXVAECodec(nn.Module):
    """AutoencoderKLCogVideoX -> normalised latents (VAE latent x scaling_factor); decoding divides again.

    Guide frames are scaled as the I2V pipelines scale image latents: by 1 / scaling_factor instead when the VAE
    config sets `invert_scale_latents` (CogVideoX 1.5 I2V was trained that way)."""

    def __init__(self, vae: AutoencoderKLCogVideoX, tiling: bool = False, sampling: str = "sample") -> None:
        super().__init__()
        if sampling not in LATENT_SAMPLING:
            raise ConfigError("model.latent_sampling", f"expected one of {list(LATENT_SAMPLING)}, got {sampling!r}")
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.temporal_factor = int(cfg.temporal_compression_ratio)
        self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.channels = int(cfg.latent_channels)
        self.scaling_factor = float(cfg.scaling_factor)
        self.invert_guide_scale = bool(getattr(cfg, "invert_scale_latents", False))
        self.sampling = sampling
        if tiling:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()

    def raw_latents(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled VAE latents: a draw from the latent distribution (`sampling="sample"`, as the pipelines and
        AniSora's SAT code do) or its mean."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return dist.sample(generator) if self.sampling == "sample" else dist.mode()

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.raw_latents(pixels, generator) * self.scaling_factor

    def encode_guide_frame(self, frame: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One frame (1, 3, 1, H, W) as a 1-frame video -> its guide latent (1, C, 1, h, w)."""
        latents = self.raw_latents(frame, generator)
        return latents * (1 / self.scaling_factor) if self.invert_guide_scale else latents * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents * (1 / self.scaling_factor)).to(self.vae.dtype)
        return self.vae.decode(z, return_dict=False)[0]


class CogVideoXI2VBackbone(BackboneAdapter):
    """CogVideoX I2V (AniSora V1): T5 text, a 3D causal VAE, guide latents concatenated to the noisy latent."""

    uses_guides = True
    dit_layout = "BTCHW"
    # FasterCache as AniSora V1 ran it on CogVideoX: attention outputs reused every 2nd block-step and the
    # unconditional branch every 5th step in the late (low-noise) half
    speedup_profile = SpeedupProfile(
        taylorseer_modules=(r"transformer_blocks\.\d+\.(attn1|ff)",),
        faster_cache={"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (-1, 681),
                      "low_frequency_weight_update_timestep_range": (99, 641),
                      "high_frequency_weight_update_timestep_range": (-1, 301),
                      "spatial_attention_block_identifiers": ("transformer_blocks",), "tensor_format": "BFCHW"})

    def __init__(self, transformer: CogVideoXTransformer3DModel, codec: CogVideoXVAECodec,
                 prompt_encoder: T5PromptEncoder, noise_schedule: VSchedule = DEFAULT_SCHEDULE) -> None:
        super().__init__()
        self.denoiser = transformer
        self.codec = codec
        self.prompt_encoder = prompt_encoder
        self.image_encoder = None
        self.noise_schedule = noise_schedule
        self.objective = VPrediction(noise_schedule)
        cfg = transformer.config
        self.temporal_factor = codec.temporal_factor
        self.spatial_factor = codec.spatial_factor
        self.latent_channels = codec.channels
        self.patch_size = (int(cfg.patch_size_t or 1), int(cfg.patch_size), int(cfg.patch_size))
        if cfg.in_channels != 2 * codec.channels:
            raise ConfigError("model.in_channels", f"CogVideoX I2V needs {2 * codec.channels} input channels "
                              f"(noisy + guide latent of {codec.channels}), got {cfg.in_channels}")
        if cfg.use_learned_positional_embeddings and prompt_encoder.max_sequence_length != cfg.max_text_seq_length:
            raise ConfigError("model.max_sequence_length", f"must equal the transformer's max_text_seq_length "
                              f"{cfg.max_text_seq_length} (learned positional embeddings), "
                              f"got {prompt_encoder.max_sequence_length}")
        self._rotary: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ grid
    def padded_latent_frames(self, latent_frames: int) -> int:
        """Latent frames the transformer sees: CogVideoX 1.5 (temporal patch p_t) pads to a multiple of p_t."""
        p_t = self.denoiser.config.patch_size_t
        return latent_frames + (-latent_frames) % p_t if p_t else latent_frames

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        c, t, h, w = super().latent_shape(num_frames, height, width)
        return c, self.padded_latent_frames(t), h, w

    def check_clip_shape(self, num_frames: int, height: int, width: int, prefix: str = "data") -> None:
        super().check_clip_shape(num_frames, height, width, prefix)
        cfg = self.denoiser.config
        if cfg.use_learned_positional_embeddings:
            sf = self.spatial_factor
            if (height // sf, width // sf) != (cfg.sample_height, cfg.sample_width):
                raise ConfigError(f"{prefix}.height", f"this CogVideoX transformer has learned positional embeddings "
                                  f"for {cfg.sample_height * sf}x{cfg.sample_width * sf} only, got {height}x{width}")

    # ------------------------------------------------------------------ encoders
    def encoders(self) -> list[nn.Module]:
        """The frozen encoders that run once per request (offloaded before the DiT runs)."""
        return [self.prompt_encoder]

    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.codec.encode(pixels, generator)

    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Latents -> pixels. With `num_frames`, leading latent frames beyond what that clip needs are dropped
        first, as the stock pipeline drops CogVideoX 1.5's padding frames."""
        if num_frames is not None:
            extra = latents.shape[2] - ((num_frames - 1) // self.temporal_factor + 1)
            latents = latents[:, :, max(extra, 0):]
        return self.codec.decode(latents)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        return self.prompt_encoder(prompts)

    @torch.no_grad()
    def condition(self, guide_video: torch.Tensor, guide_mask: torch.Tensor,
                  generator: Generators = None) -> torch.Tensor:
        """(G, M) -> guide latents (B, C, T, h, w): every frame where M has a 1 is encoded alone as a 1-frame
        video and put at its latent slot (a later frame wins a shared slot); other slots are zeros.

        `generator` (one, or one per sample) draws the latents, sample by sample and frame by frame in
        order, as the pipeline's `prepare_latents` does; None uses the global RNG."""
        b, _, f, height, width = guide_video.shape
        tf, sf = self.temporal_factor, self.spatial_factor
        frames = self.padded_latent_frames((f - 1) // tf + 1)
        out = torch.zeros(b, self.latent_channels, frames, height // sf, width // sf, device=guide_video.device,
                          dtype=torch.float32)
        given = guide_mask.flatten(2).amax(dim=2) > 0  # (B, F)
        for i in range(b):
            for index in given[i].nonzero().flatten().tolist():
                slot = 0 if index == 0 else (index - 1) // tf + 1
                frame = guide_video[i : i + 1, :, index : index + 1]
                latent = self.codec.encode_guide_frame(frame, _pick(generator, i))
                out[i, :, slot] = latent[0, :, 0].float()
        # (the stock pipeline pads the clip before building these, so its extra leading copy of the first
        # slots for CogVideoX 1.5 is always empty, and the padding slots stay zero here too)
        return out

    def conditioning(self, prompts: list[str], guide_video: torch.Tensor, guide_mask: torch.Tensor,
                     generator: Generators = None) -> Conditioning:
        return Conditioning(text=self.encode_prompt(prompts), guide=self.condition(guide_video, guide_mask, generator))

    # ------------------------------------------------------------------ denoiser
    def rotary_embeddings(self, frames: int, height: int, width: int, device: torch.device
                          ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """3D RoPE (cos, sin) for a latent grid of frames x height x width, as the I2V pipeline computes it."""
        cfg = self.denoiser.config
        if not cfg.use_rotary_positional_embeddings:
            return None
        key = (frames, height, width, str(device))
        if key not in self._rotary:
            p, p_t = cfg.patch_size, cfg.patch_size_t
            grid = (height // p, width // p)
            base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
            if p_t is None:
                crops = get_resize_crop_region_for_grid(grid, base_w, base_h)
                self._rotary[key] = get_3d_rotary_pos_embed(
                    embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=grid, temporal_size=frames,
                    device=device,
                )
            else:
                self._rotary[key] = get_3d_rotary_pos_embed(
                    embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=grid,
                    temporal_size=(frames + p_t - 1) // p_t, grid_type="slice", max_size=(base_h, base_w),
                    device=device,
                )
        return self._rotary[key]

    def denoise(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The v prediction (B, C, T, h, w) for the timestep indices (B,)."""
        hidden = torch.cat([noisy, cond.guide.to(noisy.dtype)], dim=1).permute(0, 2, 1, 3, 4).contiguous()
        _, frames, _, height, width = hidden.shape
        ofs = hidden.new_full((1,), OFS_VALUE) if self.denoiser.config.ofs_embed_dim else None
        out = self.active_denoiser(
            hidden_states=hidden,
            encoder_hidden_states=cond.text,
            timestep=timestep,
            ofs=ofs,
            image_rotary_emb=self.rotary_embeddings(frames, height, width, hidden.device),
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1, 3, 4)

    def stock_sampler(self, num_steps: int) -> SamplerSpec:
        """CogVideoX's I2V pipeline: DPM on the zero-terminal-SNR schedule, dynamic CFG 6."""
        return SamplerSpec(name="cogvideox_dpm", num_steps=num_steps, guidance_scale=6.0, dynamic_cfg=True)

    def stock_pipeline(self, sampler: SamplerSpec | None = None) -> CogVideoXImageToVideoPipeline:
        """diffusers' `CogVideoXImageToVideoPipeline` over these components and this noise schedule (weights
        shared). Its own text encoding applies: an empty negative prompt is encoded by T5 there, where
        `empty_prompt="zeros"` (AniSora V1) gives zero embeddings here."""
        sampler = sampler or SamplerSpec(name="cogvideox_dpm", num_steps=50, guidance_scale=6.0, dynamic_cfg=True)
        return CogVideoXImageToVideoPipeline(
            tokenizer=self.prompt_encoder.tokenizer, text_encoder=self.prompt_encoder.encoder, vae=self.codec.vae,
            transformer=self.active_denoiser, scheduler=build_v_scheduler(sampler, self.noise_schedule))

    def parameter_counts(self) -> dict[str, int]:
        parts = {"dit": self.denoiser, "vae": self.codec, "text_encoder": self.prompt_encoder}
        return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}


# ---------------------------------------------------------------------- building


CogVideoXSpec = spec_class("CogVideoXSpec", CogVideoXModelConfig, __name__,
                           "A CogVideoX I2V model: a diffusers-format folder, or the architecture to build with "
                           "random weights (CogVideoXModelConfig's fields and defaults: CogVideoX-5B I2V as "
                           "AniSora V1 uses it).")


def build(dtype: torch.dtype = torch.float32, **values) -> CogVideoXI2VBackbone:
    """Hydra target: keyword arguments are CogVideoXSpec fields (non-network keys are dropped upstream);
    `dtype` is what the DiT and text encoder load in; the VAE too unless `vae_dtype="float32"`."""
    known = {f.name for f in fields(CogVideoXSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"unknown key; CogVideoX models take {sorted(known)}")
    spec = CogVideoXSpec(**values)
    return load_cogvideox(spec, dtype) if spec.ckpt else build_random_cogvideox(spec, dtype=dtype)


def check_cogvideox_folder(spec: CogVideoXSpec) -> Path:
    """Fail before loading anything: the folder exists and holds every part."""
    folder = Path(spec.ckpt).expanduser()
    if not folder.is_dir():
        raise ConfigError("ckpt", f"{folder} is not a directory (expected a diffusers-format CogVideoX folder)")
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise ConfigError("ckpt", f"{folder / missing[0]} is missing: a diffusers CogVideoX folder needs "
                          f"{', '.join(p + '/' for p in PARTS)} (missing: {', '.join(missing)})")
    return folder


def schedule_from_folder(folder: Path, spec: CogVideoXSpec) -> VSchedule:
    """The noise schedule of `folder/scheduler/scheduler_config.json` when there is one, else the spec's."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return VSchedule(snr_shift_scale=spec.snr_shift_scale)
    config = json.loads(path.read_text())
    if config.get("prediction_type", "v_prediction") != "v_prediction":
        raise ConfigError("ckpt", f"{path}: prediction_type must be v_prediction, got {config['prediction_type']!r}")
    keys = {f.name for f in fields(VSchedule)}
    return VSchedule(**{k: v for k, v in config.items() if k in keys})


def vae_dtype(spec: CogVideoXSpec, dtype: torch.dtype) -> torch.dtype:
    """bf16 VAE on GPU halves decode time and memory at a small fidelity cost; float32 when asked."""
    if spec.vae_dtype not in VAE_DTYPES:
        raise ConfigError("model.vae_dtype", f"expected one of {', '.join(VAE_DTYPES)}; got {spec.vae_dtype!r}")
    return torch.float32 if spec.vae_dtype == "float32" else dtype


def load_cogvideox(spec: CogVideoXSpec, dtype: torch.dtype = torch.float32) -> CogVideoXI2VBackbone:
    """All parts from a diffusers-format folder, local files only."""
    folder = check_cogvideox_folder(spec)
    kw = {"local_files_only": True}
    transformer = CogVideoXTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype, **kw)
    vae = AutoencoderKLCogVideoX.from_pretrained(folder / "vae", torch_dtype=vae_dtype(spec, dtype), **kw)
    encoder = T5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype, **kw)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", **kw)
    return assemble(spec, transformer.eval(), vae, encoder, tokenizer, schedule_from_folder(folder, spec))


def build_random_cogvideox(spec: CogVideoXSpec, tokenizer=None, dtype: torch.dtype = torch.float32
                           ) -> CogVideoXI2VBackbone:
    """Random weights at the spec's sizes (deterministic per init_seed); a word-level tokenizer unless given."""
    from anisora.backbones.tiny import word_tokenizer, world_vocabulary

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=spec.num_attention_heads, attention_head_dim=spec.attention_head_dim,
            in_channels=spec.in_channels, out_channels=spec.out_channels, time_embed_dim=spec.time_embed_dim,
            ofs_embed_dim=spec.ofs_embed_dim, text_embed_dim=spec.text_embed_dim, num_layers=spec.num_layers,
            sample_width=spec.sample_width, sample_height=spec.sample_height, sample_frames=spec.sample_frames,
            patch_size=spec.patch_size, patch_size_t=spec.patch_size_t, temporal_compression_ratio=VAE_TEMPORAL,
            max_text_seq_length=spec.max_text_seq_length,
            use_rotary_positional_embeddings=spec.use_rotary_positional_embeddings,
            use_learned_positional_embeddings=spec.use_learned_positional_embeddings,
        )
        blocks = len(spec.vae_block_out_channels)
        vae = AutoencoderKLCogVideoX(
            block_out_channels=tuple(spec.vae_block_out_channels), latent_channels=spec.out_channels,
            layers_per_block=spec.vae_layers_per_block, norm_num_groups=spec.vae_norm_num_groups,
            temporal_compression_ratio=VAE_TEMPORAL, scaling_factor=spec.vae_scaling_factor,
            down_block_types=("CogVideoXDownBlock3D",) * blocks, up_block_types=("CogVideoXUpBlock3D",) * blocks,
        )
        tokenizer = tokenizer or word_tokenizer(world_vocabulary())
        encoder = T5EncoderModel(T5Config(
            vocab_size=max(spec.text_vocab, len(tokenizer)), d_model=spec.text_embed_dim, d_kv=spec.text_kv,
            d_ff=spec.text_ff, num_layers=spec.text_layers, num_heads=spec.text_heads,
            feed_forward_proj="gated-gelu", dropout_rate=0.0,
        ))
    # a plain cast, as loading does (CogVideoX keeps no module in fp32); it also makes the float64 sin-cos
    # table of a learned positional embedding the same float32 buffer a loaded model has
    nn.Module.to(transformer, dtype)
    encoder.to(dtype)
    vae.to(vae_dtype(spec, dtype))
    return assemble(spec, transformer.eval(), vae, encoder, tokenizer, VSchedule(snr_shift_scale=spec.snr_shift_scale))


def assemble(spec: CogVideoXSpec, transformer, vae, encoder, tokenizer,
             schedule: VSchedule = DEFAULT_SCHEDULE) -> CogVideoXI2VBackbone:
    prompt_encoder = T5PromptEncoder(tokenizer, encoder, spec.max_sequence_length, spec.empty_prompt)
    codec = CogVideoXVAECodec(vae, tiling=spec.vae_tiling, sampling=spec.latent_sampling)
    return CogVideoXI2VBackbone(transformer, codec, prompt_encoder, schedule)


def parameter_counts(backbone: CogVideoXI2VBackbone) -> dict[str, int]:
    """Parameters per component: dit, vae, text_encoder."""
    return backbone.parameter_counts()
