"""Real-size models need weights (or `model.init=random`) and must fit the device: refused in one line first."""

from __future__ import annotations

import pytest
import torch
from conftest import compose, list_files, run_entry
from omegaconf import OmegaConf

from anisora.accelerators import devices
from anisora.backbones import check_model_config
from anisora.backbones.memory import folder_parameter_count, parameter_count
from anisora.config.errors import ConfigError

SMALL_WAN = ["model=wan1.3b", "model.init=random", "model.num_layers=2", "model.num_attention_heads=2",
             "model.attention_head_dim=8", "model.ffn_dim=32", "model.text_dim=16", "model.text_layers=1",
             "model.text_heads=2", "model.text_ff=32", "model.text_vocab=1", "model.vae_base_dim=8"]
SMALL_WAN_I2V = ["model=wan14b", *SMALL_WAN[1:], "model.image_dim=16", "model.added_kv_proj_dim=16",
                 "model.clip_layers=1", "model.clip_heads=2", "model.clip_ff=32", "model.clip_image_size=28"]
SMALL_COGVIDEOX = ["model=cogvideox5b", "model.init=random", "model.num_layers=2", "model.num_attention_heads=2",
                   "model.attention_head_dim=16", "model.time_embed_dim=32", "model.text_embed_dim=32",
                   "model.sample_height=4", "model.sample_width=4", "model.sample_frames=9",
                   "model.max_text_seq_length=16", "model.max_sequence_length=16", "model.text_layers=1",
                   "model.text_heads=2", "model.text_kv=8", "model.text_ff=32", "model.text_vocab=0",
                   "model.vae_block_out_channels=[8,8,8,8]", "model.vae_layers_per_block=1",
                   "model.vae_norm_num_groups=2"]


def model_config(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose("train", overrides).model, resolve=True)


def test_train_real_size_model_without_weights_exits_2_in_one_line(tmp_path):
    log_dir = tmp_path / "outputs"
    out = run_entry("train.py", "model=cogvideox5b", log_dir=log_dir, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.ckpt: "), lines
    assert "model.init=random" in lines[0]
    assert list_files(log_dir) == [] and not log_dir.exists()


@pytest.mark.parametrize("model", ["wan1.3b", "wan14b", "wan14b_720p", "cogvideox5b"])
def test_weights_are_required_unless_random_init_is_asked_for(model):
    cfg = model_config([f"model={model}"])
    with pytest.raises(ConfigError, match=r"^model\.ckpt: .*model\.init=random"):
        check_model_config(cfg, "cpu", "32-true")
    with pytest.raises(ConfigError, match=r"^model\.init: "):
        check_model_config(dict(cfg, init="random", ckpt="/weights"), "cpu", "32-true")


def test_tiny_model_needs_no_weights():
    check_model_config(model_config([]), "cpu", "32-true")


def test_a_model_that_cannot_fit_is_refused_in_one_line(monkeypatch):
    cfg = model_config(SMALL_WAN)
    need = parameter_count(cfg) * 4
    monkeypatch.setattr(devices, "device_memory_bytes", lambda device: need - 1)
    with pytest.raises(ConfigError) as refused:
        check_model_config(cfg, "cpu", "32-true")
    message = str(refused.value)
    assert message.startswith("model: wan model of ") and "GiB" in message and "\n" not in message
    monkeypatch.setattr(devices, "device_memory_bytes", lambda device: need)
    check_model_config(cfg, "cpu", "32-true")


def test_the_real_size_estimate_refuses_cogvideox5b_on_a_24_gib_host(monkeypatch):
    monkeypatch.setattr(devices, "device_memory_bytes", lambda device: 24 * 2**30)
    cfg = dict(model_config(["model=cogvideox5b"]), init="random")
    with pytest.raises(ConfigError, match=r"model: cogvideox model of 10\.5\dB parameters needs about 39\.\d GiB"):
        check_model_config(cfg, "cpu", "32-true")
    monkeypatch.setattr(devices, "device_memory_bytes", lambda device: 141 * 2**30)
    check_model_config(cfg, "gpu" if torch.cuda.is_available() else "cpu", "bf16-mixed")


def real_count(backbone: torch.nn.Module) -> int:
    return sum(p.numel() for p in backbone.parameters())


@pytest.mark.parametrize("overrides", [SMALL_WAN, SMALL_WAN_I2V, SMALL_COGVIDEOX],
                         ids=["wan_t2v", "wan_i2v", "cogvideox"])
def test_estimate_is_within_5_percent_of_a_built_model(overrides):
    from anisora.backbones import build_backbone

    cfg = model_config(overrides)
    built = real_count(build_backbone(dict(cfg, lora=None)))
    assert abs(parameter_count(cfg) - built) <= 0.05 * built


def test_folder_estimate_reads_the_weight_files(tmp_path):
    from anisora.backbones import build_backbone

    cfg = model_config(SMALL_WAN)
    backbone = build_backbone(dict(cfg, lora=None))
    backbone.denoiser.save_pretrained(tmp_path / "transformer")
    backbone.codec.vae.save_pretrained(tmp_path / "vae")
    expected = real_count(backbone.denoiser) + real_count(backbone.codec.vae)
    assert folder_parameter_count(cfg, tmp_path) == expected
