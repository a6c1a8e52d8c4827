"""CogVideoX transformer weights in SwissArmyTransformer (SAT) layout, as AniSora V1 ships them, <-> diffusers.

SAT fuses q, k and v into one `query_key_value` projection and produces all twelve adaLN modulations of a
layer from one linear: [shift, scale, gate] for image attention, image MLP, text attention and text MLP, in
that order. diffusers splits them by norm instead: norm1 (attention) takes image then text, and so does
norm2 (MLP). SAT's layer norms all use eps 1e-6, which the converted config keeps.

The latent grid the model was trained on is not in any weight shape, but SAT stores its 3-D RoPE table
(`freqs_sin`/`freqs_cos`), and the grid is read back from it; AniSora V1's learnable positional
embedding has exactly that many image tokens after the text tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel

from anisora.config.errors import ConfigError

Target = tuple[str, Callable[[torch.Tensor], torch.Tensor]]

PREFIX = "model.diffusion_model."
#: keys of the SAT engine that belong to other components (text encoder, VAE): not part of the transformer
OTHER_COMPONENTS = ("conditioner.", "first_stage_model.")
#: SAT tensors the diffusers model does not keep: the RoPE table (recomputed by pipelines) and the
#: token and position embedding tables of SAT's base transformer, which the video DiT never reads
FREQS_COS, FREQS_SIN = "mixins.pos_embed.freqs_cos", "mixins.pos_embed.freqs_sin"
UNUSED = (FREQS_COS, FREQS_SIN, "transformer.position_embeddings.weight", "transformer.word_embeddings.weight")
EPS = 1e-6
HEAD_DIM = 64
THETA = 10000.0
TEMPORAL_COMPRESSION = 4
DEFAULT_GRID = (13, 30, 45)  # (latent frames, height, width) in patches: diffusers' 49 x 480 x 720 default
DEFAULT_TEXT_LENGTH = 226

_TOP_MODULES = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "mixins.patch_embed.proj": "patch_embed.proj",
    "mixins.patch_embed.text_proj": "patch_embed.text_proj",
    "transformer.final_layernorm": "norm_final",
    "mixins.final_layer.norm_final": "norm_out.norm",
    "mixins.final_layer.linear": "proj_out",
    "mixins.final_layer.adaLN_modulation.1": "norm_out.linear",  # (shift, scale) in both layouts
}
_LAYER_MODULES = {
    "input_layernorm": "norm1.norm",
    "attention.dense": "attn1.to_out.0",
    "post_attention_layernorm": "norm2.norm",
    "mlp.dense_h_to_4h": "ff.net.0.proj",
    "mlp.dense_4h_to_h": "ff.net.2",
}
_TOP_MODULES_INV = {v: k for k, v in _TOP_MODULES.items()}
_LAYER_MODULES_INV = {v: k for k, v in _LAYER_MODULES.items()}
POS_EMBEDDING = "mixins.pos_embed.pos_embedding"

_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = re.compile(r"^transformer\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)$")
_ADALN = re.compile(r"^mixins\.adaln_layer\.adaLN_modulations\.(\d+)\.1\.(weight|bias)$")
_QK_NORM = re.compile(r"^mixins\.adaln_layer\.(query|key)_layernorm_list\.(\d+)\.(weight|bias)$")
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")

# SAT's 12 adaLN chunks -> diffusers' two 6-chunk linears
ADALN_NORM1 = (0, 1, 2, 6, 7, 8)  # image attention shift/scale/gate, then text attention
ADALN_NORM2 = (3, 4, 5, 9, 10, 11)  # image MLP, then text MLP


def strip_prefix(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def _chunk(index: int, count: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t.chunk(count, dim=0)[index]


def _pick(indices: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: torch.cat([t.chunk(12, dim=0)[i] for i in indices])


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def plan_key(name: str, learned_positions: bool) -> list[Target] | None:
    """What one SAT tensor becomes in diffusers: [] when it is dropped, None when it is unknown."""
    if not name.startswith(PREFIX) and name.startswith(OTHER_COMPONENTS):
        return []
    n = strip_prefix(name)
    if n in UNUSED:
        return []
    if n == POS_EMBEDDING:
        return [("patch_embed.pos_embedding", _same)] if learned_positions else None
    if m := _QKV.match(n):
        i, leaf = m.groups()
        return [(f"transformer_blocks.{i}.attn1.to_{x}.{leaf}", _chunk(j, 3)) for j, x in enumerate("qkv")]
    if m := _ADALN.match(n):
        i, leaf = m.groups()
        return [(f"transformer_blocks.{i}.norm1.linear.{leaf}", _pick(ADALN_NORM1)),
                (f"transformer_blocks.{i}.norm2.linear.{leaf}", _pick(ADALN_NORM2))]
    if m := _QK_NORM.match(n):
        which, i, leaf = m.groups()
        return [(f"transformer_blocks.{i}.attn1.norm_{which[0]}.{leaf}", _same)]
    if m := _LAYER.match(n):
        i, module, leaf = m.groups()
        return [(f"transformer_blocks.{i}.{_LAYER_MODULES[module]}.{leaf}", _same)] if module in _LAYER_MODULES \
            else None
    module, _, leaf = n.rpartition(".")
    if module in _TOP_MODULES and leaf in ("weight", "bias"):
        return [(f"{_TOP_MODULES[module]}.{leaf}", _same)]
    return None


def to_original_key(name: str) -> str:
    """The SAT tensor a diffusers tensor comes from (unprefixed), for error messages."""
    if name == "patch_embed.pos_embedding":
        return POS_EMBEDDING
    if m := _BLOCK.match(name):
        i, module, leaf = m.groups()
        if module in _LAYER_MODULES_INV:
            return f"transformer.layers.{i}.{_LAYER_MODULES_INV[module]}.{leaf}"
        if module in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            return f"transformer.layers.{i}.attention.query_key_value.{leaf}"
        if module in ("norm1.linear", "norm2.linear"):
            return f"mixins.adaln_layer.adaLN_modulations.{i}.1.{leaf}"
        if module in ("attn1.norm_q", "attn1.norm_k"):
            which = "query" if module.endswith("q") else "key"
            return f"mixins.adaln_layer.{which}_layernorm_list.{i}.{leaf}"
    module, _, leaf = name.rpartition(".")
    return f"{_TOP_MODULES_INV[module]}.{leaf}" if module in _TOP_MODULES_INV else name


def sat_rope_table(frames: int, height: int, width: int, head_dim: int,
                   theta: float = THETA) -> tuple[torch.Tensor, torch.Tensor]:
    """SAT's 3-D RoPE table over a (frames, height, width) patch grid: (cos, sin), each (tokens, head_dim).

    Channels split t/h/w as head_dim/4, 3*head_dim/8, 3*head_dim/8, each frequency repeated for its pair;
    tokens are in (t, h, w) order. diffusers' CogVideoX attention takes it as `image_rotary_emb`.
    """
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    if sum(dims) != head_dim:
        raise ConfigError("head_dim", f"SAT's 3-D RoPE needs a head width divisible by 8, got {head_dim}")
    axes = []
    for n, d in zip((frames, height, width), dims):
        inv = 1.0 / theta ** (torch.arange(0, d, 2)[: d // 2].float() / d)
        axes.append(torch.outer(torch.arange(n, dtype=torch.float32), inv).repeat_interleave(2, dim=-1))
    t, h, w = axes
    grid = (frames, height, width)
    freqs = torch.cat([t[:, None, None].expand(*grid, -1), h[None, :, None].expand(*grid, -1),
                       w[None, None].expand(*grid, -1)], dim=-1).reshape(frames * height * width, head_dim)
    return freqs.cos(), freqs.sin()


def _first_repeat(rows: torch.Tensor) -> int:
    """Index of the first row after row 0 equal to row 0 (len(rows) when none is)."""
    same = (rows[1:] == rows[:1]).all(dim=1).nonzero()
    return int(same[0]) + 1 if len(same) else len(rows)


def infer_grid(freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> tuple[int, int, int]:
    """(frames, height, width) in patches of the grid a SAT RoPE table was built for.

    Tokens run in (t, h, w) order, so the w channels first repeat row 0 after `width` tokens and the h and w
    channels together after `height * width`; exact comparison is safe because equal positions were
    computed identically. The table is then rebuilt and compared, so anything else is refused.
    """
    if freqs_cos.ndim != 2 or freqs_cos.shape != freqs_sin.shape or not freqs_cos.numel():
        raise ConfigError(FREQS_COS, f"expected (tokens, head_dim), got {list(freqs_cos.shape)}")
    tokens, head_dim = freqs_cos.shape
    table = torch.cat([freqs_cos, freqs_sin], dim=1).float()
    dt, dh = head_dim // 4, head_dim // 8 * 3
    parts = [torch.cat([table[:, a:b], table[:, head_dim + a: head_dim + b]], dim=1)
             for a, b in ((dt, dt + dh), (dt + dh, head_dim))]
    width = _first_repeat(parts[1])
    area = _first_repeat(torch.cat(parts, dim=1))
    if area % width or tokens % area:
        raise ConfigError(FREQS_COS, f"not a 3-D RoPE table (period {width} in {area} in {tokens} tokens)")
    grid = (tokens // area, area // width, width)
    cos, sin = sat_rope_table(*grid, head_dim)
    if not (torch.allclose(cos, freqs_cos.float(), atol=1e-2) and torch.allclose(sin, freqs_sin.float(), atol=1e-2)):
        raise ConfigError(FREQS_COS, f"does not match a {grid} RoPE table with theta {THETA:g}")
    return grid


def _is_fixed_sincos(pos: torch.Tensor) -> bool:
    """CogVideoX-2B stores its fixed sin-cos table: zero text rows, then a first image row of 0s and 1s."""
    rows = pos.reshape(-1, pos.shape[-1]).float()
    nonzero = rows.abs().sum(dim=1).nonzero()
    if not len(nonzero):
        return False
    first = rows[int(nonzero[0])]
    return bool(((first == 0) | (first == 1)).all())


def check_layout(names: Sequence[str]) -> None:
    stripped = {strip_prefix(n) for n in names}
    if "mixins.patch_embed.proj.weight" in stripped and any(_QKV.match(n) for n in stripped):
        return
    if any(n.startswith("transformer_blocks.") for n in stripped):
        raise ConfigError("checkpoint", "already in diffusers' layout: load it with "
                                        "CogVideoXTransformer3DModel.from_pretrained")
    sample = ", ".join(sorted(names)[:3]) or "none"
    raise ConfigError("checkpoint", f"not a CogVideoX SAT transformer (no mixins.patch_embed.proj / "
                                    f"query_key_value; keys: {sample})")


def _shape(shapes: Mapping[str, Sequence[int]], name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ConfigError("checkpoint", f"missing {PREFIX}{name}, needed to infer the architecture")
    return tuple(shapes[name])


def _grid_from_options(sample_size: Sequence[int] | None, sample_frames: int | None,
                       patch: int) -> tuple[int, int, int] | None:
    if sample_size is None and sample_frames is None:
        return None
    if sample_size is None or sample_frames is None:
        raise ConfigError("--sample-size/--sample-frames", "give both (latent height and width, and pixel frames)")
    height, width = sample_size
    if height % patch or width % patch or height <= 0 or width <= 0:
        raise ConfigError("--sample-size", f"latent height and width must be positive multiples of {patch}, "
                                           f"got {height} {width}")
    if sample_frames < 1 or (sample_frames - 1) % TEMPORAL_COMPRESSION:
        raise ConfigError("--sample-frames", f"must be {TEMPORAL_COMPRESSION}n+1 (e.g. 49), got {sample_frames}")
    return (sample_frames - 1) // TEMPORAL_COMPRESSION + 1, height // patch, width // patch


def infer_config(shapes: Mapping[str, Sequence[int]], read: Callable[[str], torch.Tensor],
                 head_dim: int | None = None, sample_size: Sequence[int] | None = None,
                 sample_frames: int | None = None) -> dict[str, Any]:
    """CogVideoXTransformer3DModel keyword arguments from shapes, plus the RoPE table for the latent grid.

    `read(name)` returns a tensor by its checkpoint name. `sample_size` (latent height, width) and
    `sample_frames` (pixel frames) are needed only when the checkpoint has no RoPE table to read them from.
    """
    check_layout(list(shapes))
    full = {strip_prefix(k): k for k in shapes}
    s = {strip_prefix(k): tuple(v) for k, v in shapes.items()}
    proj = _shape(s, "mixins.patch_embed.proj.weight")
    if len(proj) != 4 or proj[2] != proj[3]:
        raise ConfigError("checkpoint", f"patch embedding {list(proj)} is not CogVideoX 1.0's square Conv2d "
                                        "(CogVideoX 1.5's temporal patches are not supported)")
    hidden, in_channels, patch, _ = proj
    time_embed_dim, freq_dim = _shape(s, "time_embed.0.weight")
    if freq_dim != hidden:
        raise ConfigError("checkpoint", f"time_embed.0 takes {freq_dim} sinusoid channels; diffusers needs the "
                                        f"model width {hidden}")
    layers = sorted({int(m.group(1)) for n in s if (m := _QKV.match(n)) and m.group(2) == "weight"})
    if not layers or layers != list(range(len(layers))):
        raise ConfigError("checkpoint", f"transformer layers must be numbered 0..N-1, found {layers[:3]}...")
    qk = s.get("mixins.adaln_layer.query_layernorm_list.0.weight")
    if qk is not None and head_dim and head_dim != qk[0]:
        raise ConfigError("--head-dim", f"{head_dim} disagrees with the checkpoint's qk-norm width {qk[0]}")
    head_dim = qk[0] if qk is not None else head_dim or HEAD_DIM
    if hidden % head_dim:
        raise ConfigError("--head-dim", f"model width {hidden} is not a multiple of the head width {head_dim}")
    mlp = _shape(s, "transformer.layers.0.mlp.dense_h_to_4h.weight")[0]
    if mlp != 4 * hidden:
        raise ConfigError("checkpoint", f"MLP width {mlp} is not 4 x {hidden}, which diffusers' CogVideoX assumes")
    out_rows = _shape(s, "mixins.final_layer.linear.weight")[0]
    if out_rows % (patch * patch):
        raise ConfigError("checkpoint", f"final linear rows {out_rows} are not a multiple of {patch}x{patch}")

    given = _grid_from_options(sample_size, sample_frames, patch)
    rope = FREQS_COS in s and FREQS_SIN in s
    if rope and s[FREQS_COS][-1] != head_dim:
        raise ConfigError("checkpoint", f"{FREQS_COS} is {s[FREQS_COS][-1]} wide, the heads {head_dim}")
    grid = infer_grid(read(full[FREQS_COS]), read(full[FREQS_SIN])) if rope else given
    if rope and given is not None and given != grid:
        raise ConfigError("--sample-size/--sample-frames", f"the checkpoint's RoPE table is for a {grid} "
                                                           f"(frames, height, width) patch grid, not {given}")
    learned = POS_EMBEDDING in s
    text_length = DEFAULT_TEXT_LENGTH
    if learned:
        pos = s[POS_EMBEDDING]
        if not rope and _is_fixed_sincos(read(full[POS_EMBEDDING])):
            raise ConfigError("checkpoint", "fixed sin-cos positions without RoPE (the CogVideoX-2B layout) are "
                                            "not supported")
        if grid is None:
            raise ConfigError("--sample-size/--sample-frames", "the checkpoint has a learnable positional embedding "
                                                               "but no RoPE table to read its grid from: pass both")
        if len(pos) != 3 or pos[-1] != hidden:
            raise ConfigError("checkpoint", f"{POS_EMBEDDING} {list(pos)} should be (1, tokens, {hidden})")
        text_length = pos[1] - grid[0] * grid[1] * grid[2]
        if text_length <= 0:
            raise ConfigError("checkpoint", f"{POS_EMBEDDING} has {pos[1]} tokens, fewer than the {grid} grid")
    frames, height, width = grid or DEFAULT_GRID
    return {
        "num_attention_heads": hidden // head_dim,
        "attention_head_dim": head_dim,
        "in_channels": in_channels,
        "out_channels": out_rows // (patch * patch),
        "time_embed_dim": time_embed_dim,
        "text_embed_dim": _shape(s, "mixins.patch_embed.text_proj.weight")[1],
        "num_layers": len(layers),
        "attention_bias": "transformer.layers.0.attention.query_key_value.bias" in s,
        "sample_width": width * patch,
        "sample_height": height * patch,
        "sample_frames": (frames - 1) * TEMPORAL_COMPRESSION + 1,
        "patch_size": patch,
        "temporal_compression_ratio": TEMPORAL_COMPRESSION,
        "max_text_seq_length": text_length,
        "norm_elementwise_affine": "transformer.layers.0.input_layernorm.weight" in s,
        "norm_eps": EPS,
        "use_rotary_positional_embeddings": True,
        "use_learned_positional_embeddings": learned,
        "patch_bias": "mixins.patch_embed.proj.bias" in s,
    }


def latent_grid(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(frames, height, width) in patches of the grid a converted config was trained on."""
    p = config["patch_size"]
    return ((config["sample_frames"] - 1) // config["temporal_compression_ratio"] + 1,
            config["sample_height"] // p, config["sample_width"] // p)


def to_sat_state_dict(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                      prefix: str = PREFIX, rope_table: bool = True) -> dict[str, torch.Tensor]:
    """A diffusers CogVideoXTransformer3DModel state dict in SAT's layout (for SAT code, and for tests)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    adaln: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state_dict.items():
        if name == "patch_embed.pos_embedding":
            if config.get("use_learned_positional_embeddings"):
                out[POS_EMBEDDING] = tensor
            continue
        m = _BLOCK.match(name)
        if m and m.group(2) in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)[-1]] = tensor
        elif m and m.group(2) in ("norm1.linear", "norm2.linear"):
            adaln.setdefault((m.group(1), m.group(3)), {})[m.group(2)[:5]] = tensor
        else:
            original = to_original_key(name)
            if original == name:
                raise ConfigError(name, "has no counterpart in SAT's layout")
            out[original] = tensor
    for (i, leaf), parts in qkv.items():
        out[f"transformer.layers.{i}.attention.query_key_value.{leaf}"] = torch.cat([parts[x] for x in "qkv"])
    for (i, leaf), parts in adaln.items():
        n1, n2 = parts["norm1"].chunk(6), parts["norm2"].chunk(6)
        chunks = [n1[ADALN_NORM1.index(j)] if j in ADALN_NORM1 else n2[ADALN_NORM2.index(j)] for j in range(12)]
        out[f"mixins.adaln_layer.adaLN_modulations.{i}.1.{leaf}"] = torch.cat(chunks)
    if rope_table:
        cos, sin = sat_rope_table(*latent_grid(config), config["attention_head_dim"])
        out[FREQS_COS], out[FREQS_SIN] = cos, sin
    return {prefix + k: v for k, v in out.items()}


def find_checkpoint(src: Path) -> list[Path]:
    """The model-states file of a SAT checkpoint: SRC itself, or `SRC/<iteration>/mp_rank_00_model_states.pt`
    (the iteration named by SRC/latest when there is one)."""
    name = "mp_rank_00_model_states.pt"
    if src.is_file():
        found = src
    elif (src / name).is_file():
        found = src / name
    elif (src / "latest").is_file():
        found = src / (src / "latest").read_text().strip() / name
        if not found.is_file():
            raise ConfigError(str(src / "latest"), f"names {found.parent.name}, but {found} does not exist")
    else:
        options = sorted(src.glob(f"*/{name}"))
        if len(options) != 1:
            listed = ", ".join(p.parent.name for p in options) if options else "none"
            raise ConfigError(str(src), f"expected one <iteration>/{name} (found: {listed}); pass the file")
        found = options[0]
    if found.name == name and (found.parent / "mp_rank_01_model_states.pt").exists():
        raise ConfigError(str(found.parent), "model-parallel checkpoint (several mp_rank_* files): merge the "
                                             "ranks first")
    return [found]


class CogVideoXSATLayout:
    """SAT's CogVideoX layout, as the converter task uses it (find files, infer, plan each tensor)."""

    name = "cogvideox-sat"
    model_class = CogVideoXTransformer3DModel

    def find_files(self, src: Path) -> list[Path]:
        return find_checkpoint(src)

    def infer_config(self, shapes: Mapping[str, Sequence[int]], read: Callable[[str], torch.Tensor],
                     **options: Any) -> dict[str, Any]:
        return infer_config(shapes, read, **options)

    def plan(self, name: str, config: Mapping[str, Any]) -> list[Target] | None:
        return plan_key(name, bool(config["use_learned_positional_embeddings"]))

    def original_key(self, target: str) -> str:
        return to_original_key(target)


LAYOUT = CogVideoXSATLayout()
