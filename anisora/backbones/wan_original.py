"""Wan2.1 transformer weights in Wan's own layout (as Wan and AniSora V2/V3 ship them) <-> diffusers.

The mapping is by name only and the architecture is read from tensor shapes, so the same code serves
1.3B and 14B, T2V, I2V and FLF2V (and Wan2.2's experts, which keep the 2.1 block layout). Wan's `norm3`
is the affine cross-attention norm, which diffusers calls `norm2`; Wan's norm1/norm2 (and the head's
norm) carry no weights.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from anisora.config.errors import ConfigError

#: what a source tensor becomes: (diffusers name, function of the source tensor)
Target = tuple[str, Callable[[torch.Tensor], torch.Tensor]]

PREFIXES = ("model.diffusion_model.",)
#: every released Wan size uses 128-wide heads; only the width (and so the head count) changes
HEAD_DIM = 128
#: Wan's RoPE tables cover 1024 positions per axis and its norms use eps 1e-6; neither is in the weights
ROPE_MAX_SEQ_LEN = 1024
EPS = 1e-6

# Wan module path -> diffusers module path (the leaf, weight or bias, is kept)
_TOP_MODULES = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
# Wan parameter -> diffusers parameter (bare tensors, no leaf)
_TOP_PARAMS = {
    "head.modulation": "scale_shift_table",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",  # FLF2V: positions of the two frames' tokens
}
_BLOCK_MODULES = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_BLOCK_PARAMS = {"modulation": "scale_shift_table"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


_TOP_MODULES_INV, _TOP_PARAMS_INV = _invert(_TOP_MODULES), _invert(_TOP_PARAMS)
_BLOCK_MODULES_INV, _BLOCK_PARAMS_INV = _invert(_BLOCK_MODULES), _invert(_BLOCK_PARAMS)


def strip_prefix(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _rename(name: str, modules: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    if name in params:
        return params[name]
    module, _, leaf = name.rpartition(".")
    if module in modules and leaf in ("weight", "bias"):
        return f"{modules[module]}.{leaf}"
    return None


def _rename_any(name: str, top: tuple[Mapping, Mapping], block: tuple[Mapping, Mapping]) -> str | None:
    match = _BLOCK.match(name)
    if match:
        rest = _rename(match.group(2), *block)
        return None if rest is None else f"blocks.{match.group(1)}.{rest}"
    return _rename(name, *top)


def to_diffusers_key(name: str) -> str | None:
    """Wan name (with or without `model.diffusion_model.`) -> diffusers name; None when Wan has no such tensor."""
    return _rename_any(strip_prefix(name), (_TOP_MODULES, _TOP_PARAMS), (_BLOCK_MODULES, _BLOCK_PARAMS))


def to_original_key(name: str) -> str | None:
    """diffusers name -> Wan name (unprefixed); None for tensors Wan does not store."""
    return _rename_any(name, (_TOP_MODULES_INV, _TOP_PARAMS_INV), (_BLOCK_MODULES_INV, _BLOCK_PARAMS_INV))


def to_original_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A diffusers WanTransformer3DModel state dict in Wan's layout (for Wan's own code, and for tests)."""
    out = {}
    for name, tensor in state_dict.items():
        original = to_original_key(name)
        if original is None:
            raise ConfigError(name, "has no counterpart in Wan's original layout")
        out[prefix + original] = tensor
    return out


def find_files(src: Path) -> list[Path]:
    """One weights file, or the safetensors shards of a folder (those its *.index.json names, when there is one)."""
    if src.is_file():
        return [src]
    indexes = sorted(src.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ConfigError(str(src), f"several shard indexes ({', '.join(p.name for p in indexes)}); pass one file")
    if indexes:
        try:
            names = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as ex:
            raise ConfigError(str(indexes[0]), f"not a shard index ({ex})") from None
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise ConfigError(str(indexes[0]), f"names shards that are not there: {', '.join(missing[:3])}")
        return [src / n for n in names]
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise ConfigError(str(src), "no .safetensors files in this folder (pass a single .safetensors/.pt/.pth file)")
    return shards


def _shape(shapes: Mapping[str, Sequence[int]], name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ConfigError("checkpoint", f"missing {name}, needed to infer the architecture")
    return tuple(shapes[name])


def _block_indices(names: Sequence[str]) -> list[int]:
    return sorted({int(m.group(1)) for n in names if (m := _BLOCK.match(n))})


def check_layout(names: Sequence[str]) -> None:
    """Fail with one line when the tensors are not a Wan original-format transformer."""
    stripped = {strip_prefix(n) for n in names}
    if "patch_embedding.weight" in stripped and "head.head.weight" in stripped:
        return
    if any(n.startswith("condition_embedder.") for n in stripped):
        raise ConfigError("checkpoint", "already in diffusers' layout: load it with "
                                        "WanTransformer3DModel.from_pretrained")
    sample = ", ".join(sorted(names)[:3]) or "none"
    raise ConfigError("checkpoint", f"not a Wan original-format transformer (no patch_embedding/head.head; "
                                    f"keys: {sample})")


def infer_config(shapes: Mapping[str, Sequence[int]], head_dim: int | None = None,
                 rope_max_seq_len: int = ROPE_MAX_SEQ_LEN) -> dict[str, Any]:
    """WanTransformer3DModel keyword arguments from tensor shapes alone (names with or without the prefix)."""
    check_layout(list(shapes))
    s = {strip_prefix(k): tuple(v) for k, v in shapes.items()}
    dim, in_channels, *patch = _shape(s, "patch_embedding.weight")
    if len(patch) != 3:
        raise ConfigError("checkpoint", f"patch_embedding.weight should be 5-D (Conv3d), got "
                                        f"{[dim, in_channels, *patch]}")
    head_dim = head_dim or HEAD_DIM
    if head_dim <= 0 or dim % head_dim:
        raise ConfigError("--head-dim", f"model width {dim} is not a multiple of the head width {head_dim}; "
                                        "pass the head width (Wan's released models use 128)")
    layers = _block_indices(list(s))
    if not layers or layers != list(range(len(layers))):
        raise ConfigError("checkpoint", f"blocks must be numbered 0..N-1, found {layers[:3]}...{layers[-3:]}")
    head_out = _shape(s, "head.head.weight")[0]
    if head_out % math.prod(patch):
        raise ConfigError("checkpoint", f"head.head.weight rows {head_out} are not a multiple of the patch {patch}")
    image_dim = s["img_emb.proj.0.weight"][0] if "img_emb.proj.0.weight" in s else None
    if image_dim is None and "img_emb.proj.1.weight" in s:
        image_dim = s["img_emb.proj.1.weight"][1]
    k_img = s.get("blocks.0.cross_attn.k_img.weight")
    emb_pos = s.get("img_emb.emb_pos")
    return {
        "patch_size": tuple(patch),
        "num_attention_heads": dim // head_dim,
        "attention_head_dim": head_dim,
        "in_channels": in_channels,
        "out_channels": head_out // math.prod(patch),
        "text_dim": _shape(s, "text_embedding.0.weight")[1],
        "freq_dim": _shape(s, "time_embedding.0.weight")[1],
        "ffn_dim": _shape(s, "blocks.0.ffn.0.weight")[0],
        "num_layers": len(layers),
        "cross_attn_norm": "blocks.0.norm3.weight" in s,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in s else None,
        "eps": EPS,
        "image_dim": image_dim,
        "added_kv_proj_dim": None if k_img is None else k_img[1],
        "rope_max_seq_len": rope_max_seq_len,
        "pos_embed_seq_len": None if emb_pos is None else emb_pos[1],
    }


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class WanOriginalLayout:
    """Wan's original layout, as the converter task uses it (find files, infer, plan each tensor)."""

    name = "wan-original"
    model_class = WanTransformer3DModel

    def find_files(self, src: Path) -> list[Path]:
        return find_files(src)

    def infer_config(self, shapes: Mapping[str, Sequence[int]], read: Callable[[str], torch.Tensor],
                     head_dim: int | None = None, **options: Any) -> dict[str, Any]:
        return infer_config(shapes, head_dim=head_dim, **options)

    def plan(self, name: str, config: Mapping[str, Any]) -> list[Target] | None:
        target = to_diffusers_key(name)
        return None if target is None else [(target, _same)]

    def original_key(self, target: str) -> str:
        return to_original_key(target) or target


LAYOUT = WanOriginalLayout()
