"""This framework's seeded Wan components as DiffSynth-Studio modules, so its pipeline runs on the same weights.

DiffSynth-Studio keeps Wan's original layout: Wan's own T5, open-clip's ViT-H/14, Wan's VAE and DiT module names.
The DiT goes through this framework's own export (`anisora.backbones.wan_original`); the text encoder (transformers'
UMT5), the image encoder (transformers' CLIP vision tower) and the VAE (diffusers' `AutoencoderKLWan`) are renamed
here by rule. Tensors are shared with ours, not copied, except the fused q/k/v of open-clip's attention and dtype
casts. `parity` runs every component both ways on one input; benchmarks/diffsynth_infer.py --check prints it.
Import only where DiffSynth-Studio is installed (a process of its own: its package pulls torchvision).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from anisora.backbones.wan_original import to_original_state_dict
from anisora.config.errors import ConfigError

Rules = list[tuple[re.Pattern, str | Callable[[re.Match], str]]]

#: a diffusers Wan VAE residual block's parts -> Wan's `residual` Sequential indices (norm, SiLU, conv, norm, ...)
_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}


def _rules(*pairs: tuple[str, str | Callable[[re.Match], str]]) -> Rules:
    """(pattern, target) pairs -> compiled rules; a name takes the first that matches."""
    return [(re.compile(pattern), target) for pattern, target in pairs]


def _resnet(rest: str) -> str:
    part, _, leaf = rest.partition(".")
    return f"{_RESNET[part]}.{leaf}" if part in _RESNET else rest


def _vae_rules(stage: int) -> Rules:
    """`stage`: entries of one decoder stage in Wan's flat `upsamples` list (its resnets, then its upsampler)."""
    return _rules(
        (r"^quant_conv\.(.+)$", r"conv1.\1"),
        (r"^post_quant_conv\.(.+)$", r"conv2.\1"),
        (r"^(encoder|decoder)\.conv_in\.(.+)$", r"\1.conv1.\2"),
        (r"^(encoder|decoder)\.norm_out\.(.+)$", r"\1.head.0.\2"),
        (r"^(encoder|decoder)\.conv_out\.(.+)$", r"\1.head.2.\2"),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", r"\1.middle.1.\2"),
        (r"^(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)$",
         lambda m: f"{m[1]}.middle.{2 * int(m[2])}.{_resnet(m[3])}"),
        (r"^encoder\.down_blocks\.(\d+)\.(.+)$", lambda m: f"encoder.downsamples.{m[1]}.{_resnet(m[2])}"),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$",
         lambda m: f"decoder.upsamples.{stage * int(m[1]) + int(m[2])}.{_resnet(m[3])}"),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$",
         lambda m: f"decoder.upsamples.{stage * int(m[1]) + stage - 1}.{m[2]}"),
    )


_T5_RULES = _rules(
    (r"^shared\.weight$", "token_embedding.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight$", r"blocks.\1.attn.\2.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
     r"blocks.\1.pos_embedding.embedding.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight$", r"blocks.\1.norm1.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight$", r"blocks.\1.norm2.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.weight$", r"blocks.\1.ffn.gate.0.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.weight$", r"blocks.\1.ffn.fc1.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.weight$", r"blocks.\1.ffn.fc2.weight"),
    (r"^encoder\.final_layer_norm\.weight$", "norm.weight"),
)

_CLIP_RULES = _rules(
    (r"^embeddings\.patch_embedding\.weight$", "patch_embedding.weight"),
    (r"^pre_layrnorm\.(.+)$", r"pre_norm.\1"),
    (r"^post_layernorm\.(.+)$", r"post_norm.\1"),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.(.+)$", r"transformer.\1.norm1.\2"),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.(.+)$", r"transformer.\1.norm2.\2"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)$", r"transformer.\1.attn.proj.\2"),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.(.+)$", r"transformer.\1.mlp.0.\2"),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.(.+)$", r"transformer.\1.mlp.2.\2"),
)
_CLIP_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def _rename(name: str, rules: Rules, what: str) -> str:
    for pattern, target in rules:
        match = pattern.match(name)
        if match:
            return target(match) if callable(target) else match.expand(target)
    raise ConfigError(name, f"has no counterpart in {what}")


def vae_state_dict(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """diffusers' AutoencoderKLWan -> Wan's VAE names (DiffSynth's `WanVideoVAE.model`)."""
    rules = _vae_rules(vae.config.num_res_blocks + 2)
    return {_rename(k, rules, "Wan's VAE"): v for k, v in vae.state_dict().items()}


def t5_state_dict(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers' UMT5EncoderModel -> Wan's T5 encoder names (its tied `encoder.embed_tokens` is `shared`)."""
    return {_rename(k, _T5_RULES, "Wan's T5"): v for k, v in encoder.state_dict().items()
            if k != "encoder.embed_tokens.weight"}


def clip_visual_state_dict(vision: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers' CLIPVisionModel -> open-clip's ViT names (`visual.*`; q, k, v fused into `to_qkv`)."""
    state = {k.removeprefix("vision_model."): v for k, v in vision.state_dict().items()}
    out: dict[str, torch.Tensor] = {"cls_embedding": state.pop("embeddings.class_embedding").view(1, 1, -1),
                                    "pos_embedding": state.pop("embeddings.position_embedding.weight")[None]}
    state.pop("embeddings.position_ids", None)
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        match = _CLIP_QKV.match(name)
        if match:
            fused.setdefault((match[1], match[3]), {})[match[2]] = tensor
        else:
            out[_rename(name, _CLIP_RULES, "open-clip's ViT")] = tensor
    for (layer, leaf), parts in fused.items():
        out[f"transformer.{layer}.attn.to_qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def dit_config(transformer: torch.nn.Module) -> dict:
    """DiffSynth's WanModel arguments for a diffusers WanTransformer3DModel."""
    c = transformer.config
    return dict(dim=c.num_attention_heads * c.attention_head_dim, in_dim=c.in_channels, ffn_dim=c.ffn_dim,
                out_dim=c.out_channels, text_dim=c.text_dim, freq_dim=c.freq_dim, eps=c.eps,
                patch_size=tuple(c.patch_size), num_heads=c.num_attention_heads, num_layers=c.num_layers,
                has_image_input=c.image_dim is not None)


def _load(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, strict: bool = True) -> None:
    """Assign the tensors (no copy where dtype and device already match); every one of ours must land."""
    result = module.load_state_dict(dict(state), strict=False, assign=True)
    if result.unexpected_keys or (strict and result.missing_keys):
        raise ConfigError(what, f"did not load: unexpected {result.unexpected_keys[:4]}, "
                                f"missing {result.missing_keys[:4]}")


def diffsynth_models(backbone, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """DiffSynth-Studio's dit, text_encoder, image_encoder and vae over our backbone's weights, in `dtype`."""
    from diffsynth.models.wan_video_dit import WanModel, precompute_freqs_cis_3d
    from diffsynth.models.wan_video_image_encoder import WanImageEncoder
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import VideoVAE_, WanVideoVAE

    device = next(backbone.denoiser.parameters()).device
    cast = {k: v.to(dtype) for k, v in to_original_state_dict(backbone.denoiser.state_dict()).items()}
    with torch.device("meta"):
        dit = WanModel(**dit_config(backbone.denoiser))
    _load(dit, cast, "DiffSynth's WanModel")
    dit.freqs = precompute_freqs_cis_3d(backbone.denoiser.config.attention_head_dim)  # (built on meta above)

    t5 = backbone.prompt_encoder.encoder
    c = t5.config
    with torch.device("meta"):
        text_encoder = WanTextEncoder(vocab=c.vocab_size, dim=c.d_model, dim_attn=c.num_heads * c.d_kv,
                                      dim_ffn=c.d_ff, num_heads=c.num_heads, num_layers=c.num_layers,
                                      num_buckets=c.relative_attention_num_buckets, shared_pos=False, dropout=0.0)
    _load(text_encoder, {k: v.to(dtype) for k, v in t5_state_dict(t5).items()}, "DiffSynth's WanTextEncoder")

    image_encoder = None
    if backbone.image_encoder is not None:
        image_encoder = WanImageEncoder()  # open-clip XLM-RoBERTa ViT-H/14; its text tower stays unused
        visual = {k: v.to(dtype) for k, v in clip_visual_state_dict(backbone.image_encoder.encoder).items()}
        _load(image_encoder.model.visual, visual, "DiffSynth's WanImageEncoder.visual", strict=False)
        image_encoder.to(device=device, dtype=dtype)

    ours = backbone.codec.vae
    vae = WanVideoVAE(z_dim=ours.config.z_dim)
    if ours.config.base_dim != vae.model.dim:  # toy sizes (smoke): the same architecture at our width
        vae.model = VideoVAE_(dim=ours.config.base_dim, z_dim=ours.config.z_dim).eval().requires_grad_(False)
    _load(vae.model, {k: v.to(dtype) for k, v in vae_state_dict(ours).items()}, "DiffSynth's WanVideoVAE")
    vae.to(device)
    return {"dit": dit.eval(), "text_encoder": text_encoder.eval(), "image_encoder": image_encoder, "vae": vae}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """infer_latency.py's relative L2, in fp32 (the components may run in bf16)."""
    from infer_latency import rel_l2

    return rel_l2(a.float(), b.float())


@torch.no_grad()
def parity(backbone, models: Mapping[str, torch.nn.Module], frames: int, height: int, width: int) -> dict[str, float]:
    """Relative L2 between each of our components and its DiffSynth counterpart on one shared input."""
    from diffsynth.pipelines.wan_video import model_fn_wan_video

    device = next(backbone.denoiser.parameters()).device
    dtype = next(models["dit"].parameters()).dtype
    gen = torch.Generator("cpu").manual_seed(0)
    out: dict[str, float] = {}

    tokenizer = backbone.prompt_encoder.tokenizer
    batch = tokenizer(["a red-haired girl turns her head"], padding="max_length", max_length=16,
                      truncation=True, return_tensors="pt")
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    ours_text = backbone.prompt_encoder.encoder(ids, attention_mask=mask).last_hidden_state
    theirs_text = models["text_encoder"](ids, mask)
    keep = mask.bool()
    out["text_encoder"] = _rel(theirs_text[keep], ours_text[keep])

    if models["image_encoder"] is not None:
        pixels = torch.randn(1, 3, 224, 224, generator=gen).to(device, dtype)
        vision = backbone.image_encoder.encoder
        ours_image = vision(pixel_values=pixels.to(next(vision.parameters()).dtype),
                            output_hidden_states=True).hidden_states[-2]
        out["image_encoder"] = _rel(models["image_encoder"].model.visual(pixels, use_31_block=True), ours_image)

    vae = backbone.codec.vae
    video = torch.rand(1, 3, frames, height, width, generator=gen).mul(2).sub(1)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(device)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(device)
    ours_latent = (vae.encode(video.to(device, vae.dtype)).latent_dist.mode() - mean) / std
    theirs_latent = models["vae"].encode([video[0].to(dtype)], device=device)
    out["vae_encode"] = _rel(theirs_latent, ours_latent)
    ours_video = vae.decode(ours_latent * std + mean).sample.clamp(-1, 1)
    theirs_video = models["vae"].decode(ours_latent.to(dtype), device=device)
    out["vae_decode"] = _rel(theirs_video.to(device), ours_video)

    dit = backbone.denoiser
    c = dit.config
    lat = torch.randn(1, c.out_channels, (frames - 1) // 4 + 1, height // 8, width // 8, generator=gen).to(device)
    y = torch.randn(1, c.in_channels - c.out_channels, *lat.shape[2:], generator=gen).to(device)
    context = torch.randn(1, 512, c.text_dim, generator=gen).to(device)  # diffusers splits image tokens at 512
    clip = torch.randn(1, 257, c.image_dim, generator=gen).to(device) if c.image_dim else None
    t = torch.tensor([500.0], device=device)
    ours_dit = dit(hidden_states=torch.cat([lat, y], 1).to(dit.dtype), timestep=t,
                   encoder_hidden_states=context.to(dit.dtype),
                   encoder_hidden_states_image=None if clip is None else clip.to(dit.dtype), return_dict=False)[0]
    theirs_dit = model_fn_wan_video(dit=models["dit"], latents=lat.to(dtype), timestep=t.to(dtype),
                                    context=context.to(dtype), clip_feature=None if clip is None else clip.to(dtype),
                                    y=y.to(dtype))
    out["dit"] = _rel(theirs_dit, ours_dit)
    return out
