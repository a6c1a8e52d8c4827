"""Checkpoint converters: tiny diffusers models written in the original layouts, converted back by the CLI,
and compared (config and forward output) with the model they came from."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors import safe_open
from safetensors.torch import save_file

from anisora.backbones import cogvideox_sat, wan_original
from anisora.tasks.convert import main

WAN_BASE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, out_channels=16, text_dim=32,
                freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                rope_max_seq_len=32)
WAN_KINDS = {
    "i2v": dict(in_channels=36, image_dim=8),
    "i2v_kv": dict(in_channels=36, image_dim=8, added_kv_proj_dim=32),  # Wan2.1 I2V's own layout (k_img, v_img)
    "flf2v": dict(in_channels=36, image_dim=8, added_kv_proj_dim=32, pos_embed_seq_len=8),
    "t2v": dict(in_channels=16),
}
COG_BASE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16, num_layers=2,
                time_embed_dim=12, text_embed_dim=24, sample_height=6, sample_width=8, sample_frames=9,
                max_text_seq_length=7, use_rotary_positional_embeddings=True, norm_eps=1e-6)
PREFIX = "model.diffusion_model."


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere (norm weights and biases too), so that any swapped tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
    return model.eval()


def tiny_wan(kind: str) -> WanTransformer3DModel:
    return randomize(WanTransformer3DModel(**WAN_BASE, **WAN_KINDS[kind]), seed=len(kind))


def tiny_cogvideox(learned: bool) -> CogVideoXTransformer3DModel:
    return randomize(CogVideoXTransformer3DModel(**COG_BASE, use_learned_positional_embeddings=learned), seed=3)


def write_shards(state: dict[str, torch.Tensor], folder: Path, shards: int = 2, index: bool = False) -> Path:
    folder.mkdir(parents=True)
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i * len(names) // shards: (i + 1) * len(names) // shards]
        save_file({k: state[k].contiguous() for k in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    if index:
        text = json.dumps({"metadata": {}, "weight_map": weight_map})
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(text)
    return folder


def wan_inputs(model: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    cfg = model.config
    text_len = 512 if cfg.added_kv_proj_dim else 6  # diffusers splits image tokens off at text length 512
    inputs = {
        "hidden_states": torch.randn(1, cfg.in_channels, 3, 8, 8, generator=gen),
        "timestep": torch.tensor([420]),
        "encoder_hidden_states": torch.randn(1, text_len, cfg.text_dim, generator=gen),
    }
    if cfg.image_dim:
        images = 2 if cfg.pos_embed_seq_len else 1
        inputs["encoder_hidden_states_image"] = torch.randn(images, 4, cfg.image_dim, generator=gen)
    return inputs


def cog_inputs(model: CogVideoXTransformer3DModel) -> dict:
    gen = torch.Generator().manual_seed(8)
    cfg = model.config
    frames, height, width = cogvideox_sat.latent_grid(cfg)
    p = cfg.patch_size
    return {
        "hidden_states": torch.randn(2, frames, cfg.in_channels, height * p, width * p, generator=gen),
        "encoder_hidden_states": torch.randn(2, cfg.max_text_seq_length, cfg.text_embed_dim, generator=gen),
        "timestep": torch.tensor([999, 17]),
        "image_rotary_emb": cogvideox_sat.sat_rope_table(frames, height, width, cfg.attention_head_dim),
    }


@torch.no_grad()
def forward(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs, return_dict=False)[0]


def convert(*args: str) -> None:
    assert main(["convert", *args]) == 0


def convert_error(capsys, *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        main(["convert", *args])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def same_config(loaded, source, ignore: tuple[str, ...] = ()) -> None:
    for key, value in source.items():
        if not key.startswith("_") and key not in ignore:
            assert json.dumps(loaded[key]) == json.dumps(value), key


def assert_no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]


# ---------------------------------------------------------------- Wan


@pytest.mark.parametrize("kind", list(WAN_KINDS))
def test_wan_mapping_is_invertible_and_agrees_with_diffusers(kind):
    model = tiny_wan(kind)
    state = model.state_dict()
    original = wan_original.to_original_state_dict(state)
    ours = {wan_original.to_diffusers_key(k): v for k, v in original.items()}
    assert set(ours) == set(state) and all(torch.equal(ours[k], state[k]) for k in state)
    # diffusers' own single-file converter, on the same prefixed original-layout tensors
    theirs = convert_wan_transformer_to_diffusers({PREFIX + k: v for k, v in original.items()})
    if kind == "flf2v":  # diffusers 0.42 leaves the FLF2V image position table under its Wan name
        assert "img_emb.emb_pos" in theirs
        theirs["condition_embedder.image_embedder.pos_embed"] = theirs.pop("img_emb.emb_pos")
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)


@pytest.mark.parametrize(("kind", "source"), [("i2v", "shards+index+prefix"), ("i2v_kv", "shards"),
                                              ("flf2v", "shards+prefix"), ("t2v", "pth")])
def test_wan_convert_reproduces_the_model(tmp_path, kind, source):
    model = tiny_wan(kind)
    original = wan_original.to_original_state_dict(model.state_dict(), PREFIX if "prefix" in source else "")
    if source == "pth":
        src = tmp_path / "wan.pth"
        torch.save(original, src)
    else:
        src = write_shards(original, tmp_path / "src", index="index" in source)
    dst = tmp_path / "dst"
    convert("wan-original", str(src), str(dst), "--head-dim", "16", "--max-shard-size", "60KB")
    assert len(list(dst.glob("*.safetensors"))) > 1  # sharded, as a 14B model would be
    assert (dst / "diffusion_pytorch_model.safetensors.index.json").exists()
    loaded = WanTransformer3DModel.from_pretrained(dst).eval()
    same_config(loaded.config, model.config, ignore=("rope_max_seq_len",))
    assert loaded.config.rope_max_seq_len == wan_original.ROPE_MAX_SEQ_LEN  # Wan's table size, not in the weights
    inputs = wan_inputs(model)
    assert torch.equal(forward(loaded, inputs), forward(model, inputs))


def test_wan_console_script_casts_and_keeps_fp32_modules(tmp_path):
    model = tiny_wan("t2v")
    src = tmp_path / "wan.safetensors"
    save_file(wan_original.to_original_state_dict(model.state_dict()), src)
    dst = tmp_path / "out" / "dst"
    run = subprocess.run([str(Path(sys.executable).parent / "anisora"), "convert", "wan-original", str(src), str(dst),
                          "--head-dim", "16", "--dtype", "bf16"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "WanTransformer3DModel" in run.stdout and "num_layers=2" in run.stdout and "parameters:" in run.stdout
    with safe_open(dst / "diffusion_pytorch_model.safetensors", framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name, tensor in model.state_dict().items():
        in_fp32 = any(part in keep for part in name.split("."))
        assert stored[name].dtype == (torch.float32 if in_fp32 else torch.bfloat16), name
        assert torch.equal(stored[name], tensor.to(stored[name].dtype)), name


def test_wan_unexpected_and_missing_keys_are_named(tmp_path, capsys):
    original = wan_original.to_original_state_dict(tiny_wan("i2v").state_dict(), PREFIX)
    extra = dict(original, **{PREFIX + "blocks.1.self_attn.bogus.weight": torch.zeros(3)})
    err = convert_error(capsys, "wan-original", str(write_shards(extra, tmp_path / "a")), str(tmp_path / "da"),
                        "--head-dim", "16")
    assert "1 unexpected keys: model.diffusion_model.blocks.1.self_attn.bogus.weight" in err
    original.pop(PREFIX + "head.modulation")
    original.pop(PREFIX + "blocks.0.cross_attn.norm_k.weight")
    err = convert_error(capsys, "wan-original", str(write_shards(original, tmp_path / "b")), str(tmp_path / "db"),
                        "--head-dim", "16")
    assert "2 missing keys:" in err and "head.modulation" in err and "blocks.0.cross_attn.norm_k.weight" in err
    assert not (tmp_path / "da").exists() and not (tmp_path / "db").exists()
    assert_no_leftovers(tmp_path)


def test_wan_bad_paths_layouts_and_head_width(tmp_path, capsys):
    model = tiny_wan("t2v")
    src = tmp_path / "wan.safetensors"
    save_file(wan_original.to_original_state_dict(model.state_dict()), src)
    err = convert_error(capsys, "wan-original", str(tmp_path / "nope"), str(tmp_path / "d"))
    assert "does not exist" in err
    err = convert_error(capsys, "wan-original", str(src), str(tmp_path / "d"))  # 32-wide model, 128-wide heads
    assert "--head-dim" in err and "32" in err
    model.save_pretrained(tmp_path / "diffusers")  # already converted
    err = convert_error(capsys, "wan-original", str(tmp_path / "diffusers"), str(tmp_path / "d"))
    assert "already in diffusers' layout" in err
    sat = tmp_path / "sat.pt"
    torch.save({"module": {"model.diffusion_model.mixins.patch_embed.proj.weight": torch.zeros(1)}}, sat)
    err = convert_error(capsys, "wan-original", str(sat), str(tmp_path / "d"))
    assert "not a Wan original-format transformer" in err
    assert not (tmp_path / "d").exists()


def test_nonempty_dst_is_refused_and_left_alone_unless_overwrite(tmp_path, capsys):
    src = tmp_path / "wan.safetensors"
    model = tiny_wan("t2v")
    save_file(wan_original.to_original_state_dict(model.state_dict()), src)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    err = convert_error(capsys, "wan-original", str(src), str(dst), "--head-dim", "16")
    assert "not empty" in err and "--overwrite" in err
    assert [p.name for p in dst.iterdir()] == ["notes.txt"] and (dst / "notes.txt").read_text() == "mine"
    convert("wan-original", str(src), str(dst), "--head-dim", "16", "--overwrite")
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert_no_leftovers(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    convert("wan-original", str(src), str(empty), "--head-dim", "16")  # an empty DST is fine
    assert (empty / "config.json").exists()


def test_a_failed_write_leaves_no_dst(tmp_path, monkeypatch):
    src = tmp_path / "wan.safetensors"
    save_file(wan_original.to_original_state_dict(tiny_wan("t2v").state_dict()), src)

    def broken_save(self, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(WanTransformer3DModel, "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["convert", "wan-original", str(src), str(tmp_path / "dst"), "--head-dim", "16"])
    assert not (tmp_path / "dst").exists()
    assert_no_leftovers(tmp_path)


# ---------------------------------------------------------------- CogVideoX (SAT)


def sat_checkpoint(folder: Path, model: CogVideoXTransformer3DModel, rope_table: bool = True) -> Path:
    """AniSora V1's layout: <folder>/latest naming <folder>/1/mp_rank_00_model_states.pt with a `module` dict."""
    state = cogvideox_sat.to_sat_state_dict(model.state_dict(), model.config, rope_table=rope_table)
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    state[PREFIX + "transformer.position_embeddings.weight"] = torch.zeros(4, hidden)  # unused by the DiT
    (folder / "1").mkdir(parents=True)
    torch.save({"module": state, "iteration": 1, "mp_world_size": 1}, folder / "1" / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text("1\n")
    return folder


def sat_reference_forward(sd: dict[str, torch.Tensor], cfg, x: torch.Tensor, timestep: torch.Tensor,
                          text: torch.Tensor) -> torch.Tensor:
    """The SAT DiT of CogVideoX / AniSora V1 (patch embed, 12-way adaLN over text and image streams, qk
    LayerNorm, 3-D RoPE on image tokens, final adaLN layer), written from its definition on SAT names."""

    def g(name):
        return sd[PREFIX + name]

    def lin(h, name):
        return F.linear(h, g(name + ".weight"), g(name + ".bias"))

    def norm(h, name):
        return F.layer_norm(h, h.shape[-1:], g(name + ".weight"), g(name + ".bias"), eps=1e-6)

    def modulate(h, shift, scale):
        return h * (1 + scale[:, None]) + shift[:, None]

    heads, head_dim, p = cfg.num_attention_heads, cfg.attention_head_dim, cfg.patch_size
    hidden = heads * head_dim
    half = hidden // 2
    args = timestep[:, None].float() * torch.exp(-math.log(10000) * torch.arange(half) / half)[None]
    emb = lin(F.silu(lin(torch.cat([args.cos(), args.sin()], dim=-1), "time_embed.0")), "time_embed.2")
    b, t, c, h, w = x.shape
    image = F.conv2d(x.reshape(b * t, c, h, w), g("mixins.patch_embed.proj.weight"),
                     g("mixins.patch_embed.proj.bias"), stride=p)
    image = image.reshape(b, t, hidden, -1).transpose(2, 3).reshape(b, -1, hidden)
    n = text.shape[1]
    hs = torch.cat([lin(text, "mixins.patch_embed.text_proj"), image], dim=1)
    if PREFIX + cogvideox_sat.POS_EMBEDDING in sd:
        hs = hs + g(cogvideox_sat.POS_EMBEDDING)[:, : hs.shape[1]].to(hs.dtype)
    cos, sin = g(cogvideox_sat.FREQS_COS), g(cogvideox_sat.FREQS_SIN)

    def rope(q):
        pairs = q.unflatten(-1, (-1, 2))
        return q * cos + torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2) * sin

    for i in range(cfg.num_layers):
        layer = f"transformer.layers.{i}."
        (sh, sc, ga, sh2, sc2, ga2, tsh, tsc, tga, tsh2, tsc2, tga2) = lin(
            F.silu(emb), f"mixins.adaln_layer.adaLN_modulations.{i}.1").chunk(12, dim=1)
        txt, img = hs[:, :n], hs[:, n:]
        x_in = torch.cat([modulate(norm(txt, layer + "input_layernorm"), tsh, tsc),
                          modulate(norm(img, layer + "input_layernorm"), sh, sc)], dim=1)
        q, k, v = (z.unflatten(-1, (heads, head_dim)).transpose(1, 2)
                   for z in lin(x_in, layer + "attention.query_key_value").chunk(3, dim=-1))
        q = norm(q, f"mixins.adaln_layer.query_layernorm_list.{i}")
        k = norm(k, f"mixins.adaln_layer.key_layernorm_list.{i}")
        q = torch.cat([q[:, :, :n], rope(q[:, :, n:])], dim=2)
        k = torch.cat([k[:, :, :n], rope(k[:, :, n:])], dim=2)
        out = lin(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2), layer + "attention.dense")
        txt, img = txt + tga[:, None] * out[:, :n], img + ga[:, None] * out[:, n:]
        x_in = torch.cat([modulate(norm(txt, layer + "post_attention_layernorm"), tsh2, tsc2),
                          modulate(norm(img, layer + "post_attention_layernorm"), sh2, sc2)], dim=1)
        out = lin(F.gelu(lin(x_in, layer + "mlp.dense_h_to_4h"), approximate="tanh"), layer + "mlp.dense_4h_to_h")
        hs = torch.cat([txt + tga2[:, None] * out[:, :n], img + ga2[:, None] * out[:, n:]], dim=1)
    hs = norm(hs, "transformer.final_layernorm")[:, n:]
    shift, scale = lin(F.silu(emb), "mixins.final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(modulate(norm(hs, "mixins.final_layer.norm_final"), shift, scale), "mixins.final_layer.linear")
    out = out.reshape(b, t, h // p, w // p, -1, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, t, -1, h, w)  # b (t h w) (c p q) -> b t c (h p) (w q)


@pytest.mark.parametrize("learned", [True, False], ids=["learned-positions", "rope-only"])
def test_cogvideox_sat_convert_reproduces_the_model(tmp_path, learned):
    model = tiny_cogvideox(learned)
    src = sat_checkpoint(tmp_path / "anisora_v1", model)
    dst = tmp_path / "dst"
    convert("cogvideox-sat", str(src), str(dst))
    loaded = CogVideoXTransformer3DModel.from_pretrained(dst).eval()
    # without learned positions the text length is in no weight; diffusers only uses it to size that table
    same_config(loaded.config, model.config, ignore=() if learned else ("max_text_seq_length",))
    inputs = cog_inputs(model)
    assert torch.equal(forward(loaded, inputs), forward(model, inputs))


def test_cogvideox_sat_matches_the_sat_network(tmp_path):
    model = tiny_cogvideox(learned=True)
    src = sat_checkpoint(tmp_path / "anisora_v1", model)
    convert("cogvideox-sat", str(src), str(tmp_path / "dst"))
    loaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "dst").eval()
    sd = torch.load(src / "1" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    inputs = cog_inputs(model)
    with torch.no_grad():
        reference = sat_reference_forward(sd, loaded.config, inputs["hidden_states"], inputs["timestep"],
                                          inputs["encoder_hidden_states"])
    torch.testing.assert_close(forward(loaded, inputs), reference, rtol=1e-4, atol=1e-5)


def test_cogvideox_sat_grid_needs_options_without_a_rope_table(tmp_path, capsys):
    model = tiny_cogvideox(learned=True)
    sat_checkpoint(tmp_path / "ckpt", model, rope_table=False)
    file = tmp_path / "ckpt" / "1" / "mp_rank_00_model_states.pt"  # a direct file works too
    err = convert_error(capsys, "cogvideox-sat", str(file), str(tmp_path / "dst"))
    assert "--sample-size" in err and "--sample-frames" in err
    convert("cogvideox-sat", str(file), str(tmp_path / "dst"), "--sample-size", "6", "8", "--sample-frames", "9")
    loaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "dst").eval()
    same_config(loaded.config, model.config)
    inputs = cog_inputs(model)
    assert torch.equal(forward(loaded, inputs), forward(model, inputs))


def test_cogvideox_sat_bad_keys_and_options(tmp_path, capsys):
    model = tiny_cogvideox(learned=True)
    src = sat_checkpoint(tmp_path / "ckpt", model)
    err = convert_error(capsys, "cogvideox-sat", str(src), str(tmp_path / "d"), "--sample-size", "6", "10",
                        "--sample-frames", "9")
    assert "RoPE table is for a (3, 3, 4)" in err
    file = src / "1" / "mp_rank_00_model_states.pt"
    ckpt = torch.load(file, weights_only=True)
    ckpt["module"][PREFIX + "mixins.lora.layers.0.weight"] = torch.zeros(2)
    del ckpt["module"][PREFIX + "transformer.layers.1.mlp.dense_4h_to_h.bias"]
    torch.save(ckpt, file)
    err = convert_error(capsys, "cogvideox-sat", str(src), str(tmp_path / "d"))
    assert "1 unexpected keys: model.diffusion_model.mixins.lora.layers.0.weight" in err
    assert "1 missing keys: transformer.layers.1.mlp.dense_4h_to_h.bias" in err
    assert not (tmp_path / "d").exists()


class Opaque:
    """Stands for any pickled object a weights-only load must not run."""


def test_sat_run_arguments_load_but_other_pickled_objects_need_trust(tmp_path, capsys):
    model = tiny_cogvideox(learned=False)
    state = cogvideox_sat.to_sat_state_dict(model.state_dict(), model.config)
    file = tmp_path / "states.pt"
    torch.save({"module": state, "args": argparse.Namespace(lr=1e-5, mode="finetune")}, file)
    convert("cogvideox-sat", str(file), str(tmp_path / "a"))
    torch.save({"module": state, "client_state": Opaque()}, file)
    err = convert_error(capsys, "cogvideox-sat", str(file), str(tmp_path / "b"))
    assert "--trust-pickle" in err and not (tmp_path / "b").exists()
    convert("cogvideox-sat", str(file), str(tmp_path / "b"), "--trust-pickle")
    assert (tmp_path / "b" / "config.json").exists()


@pytest.mark.parametrize("grid", [(13, 45, 80), (1, 1, 1), (3, 1, 5), (2, 4, 1)])
def test_rope_grid_is_read_back_from_the_table(grid):
    cos, sin = cogvideox_sat.sat_rope_table(*grid, head_dim=64)
    assert cogvideox_sat.infer_grid(cos, sin) == grid
    assert cogvideox_sat.infer_grid(cos.bfloat16(), sin.bfloat16()) == grid
