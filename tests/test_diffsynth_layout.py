"""benchmarks/diffsynth_weights.py hands our Wan parts to DiffSynth-Studio's modules by name; the names its
modules carry are pinned here (DiffSynth itself is not installed beside CI's torch: its parity runs on the device)."""

from __future__ import annotations

import sys

import torch
from conftest import ROOT


def test_diffsynth_layout_renames_every_tensor_of_our_wan_parts_to_wan_names():
    """The names DiffSynth-Studio's modules carry (Wan's own VAE and T5, open-clip's ViT), pinned from their state
    dicts; every tensor of ours lands on one of them, none twice, and the fused q/k/v keeps that order."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from diffsynth_weights import clip_visual_state_dict, t5_state_dict, vae_state_dict

    vae = AutoencoderKLWan(base_dim=8, z_dim=4)
    names = vae_state_dict(vae)
    assert len(names) == len(vae.state_dict())
    for wan in ("encoder.conv1.weight", "encoder.downsamples.3.shortcut.weight",
                "encoder.downsamples.5.time_conv.bias", "encoder.middle.0.residual.6.weight",
                "encoder.middle.1.to_qkv.weight", "encoder.middle.2.residual.0.gamma",
                "encoder.head.2.weight", "conv1.weight", "conv2.bias", "decoder.upsamples.3.time_conv.weight",
                "decoder.upsamples.4.shortcut.weight", "decoder.upsamples.11.resample.1.weight",
                "decoder.upsamples.14.residual.3.gamma", "decoder.head.0.gamma"):
        assert wan in names, wan

    t5 = UMT5EncoderModel(UMT5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8, feed_forward_proj="gated-gelu"))
    t5_names = t5_state_dict(t5)
    assert set(t5_names) == {"token_embedding.weight", "norm.weight"} | {
        f"blocks.{i}.{part}.weight" for i in range(2) for part in (
            "norm1", "attn.q", "attn.k", "attn.v", "attn.o", "norm2", "ffn.gate.0", "ffn.fc1", "ffn.fc2",
            "pos_embedding.embedding")}
    wi_0 = t5.encoder.block[1].layer[1].DenseReluDense.wi_0.weight
    assert t5_names["blocks.1.ffn.gate.0.weight"].data_ptr() == wi_0.data_ptr()  # shared, not copied

    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=28, patch_size=14))
    clip = clip_visual_state_dict(vision)
    assert clip["cls_embedding"].shape == (1, 1, 16) and clip["pos_embedding"].shape == (1, 5, 16)
    ours = {k.removeprefix("vision_model."): v for k, v in vision.state_dict().items()}
    assert torch.equal(clip["transformer.1.attn.to_qkv.weight"], torch.cat(
        [ours[f"encoder.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]))
    assert {"pre_norm.weight", "post_norm.bias", "patch_embedding.weight", "transformer.0.mlp.2.weight",
            "transformer.1.attn.proj.bias", "transformer.0.norm2.weight"} <= set(clip)
