"""LoRA and full fine-tuning: only trainable weights reach the optimizer (never a frozen encoder), EMA follows the
adapters, a killed LoRA run resumes exactly, and the trained adapters load in a stock diffusers pipeline."""

from __future__ import annotations

import collections

import lightning.pytorch as pl
import pytest
import torch
from conftest import TINY, assert_same_last_checkpoints, compose, killed_and_resumed, list_files, run_entry
from omegaconf import OmegaConf

from anisora.backbones.lora import lora_parameters
from anisora.config.errors import ConfigError
from anisora.methods.sft import SFTMethod

LORA = ["model.lora.rank=4", "model.lora.alpha=8"]
# a Wan2.1 T2V model small enough for the CPU, with the real Wan VAE and UMT5 (exports need a diffusers pipeline)
WAN = ["model=wan1.3b", "model.init=random", "model.num_layers=2", "model.num_attention_heads=2",
       "model.attention_head_dim=8", "model.ffn_dim=32", "model.text_dim=16", "model.text_layers=1",
       "model.text_heads=2", "model.text_ff=32",
       "model.text_vocab=1", "model.vae_base_dim=8", "model.vae_tiling=false", "model.max_sequence_length=16",
       "data.batch_size=2", "data.val_clips=2", "accelerator=cpu"]


def method_from(overrides: list[str]) -> SFTMethod:
    composed = compose("train", overrides)
    cfg = {k: OmegaConf.to_container(composed[k], resolve=True)
           for k in ("model", "guide", "optimizer", "sampler", "trainer", "data")}
    return SFTMethod(model=cfg["model"], guide=cfg["guide"], optimizer=cfg["optimizer"], sampler=cfg["sampler"],
                     max_steps=cfg["trainer"]["max_steps"], data=cfg["data"])


def optimized(method: SFTMethod) -> set[int]:
    opt = method.configure_optimizers()["optimizer"]
    return {id(p) for group in opt.param_groups for p in group["params"]}


def fit(method: SFTMethod, overrides: list[str], steps: int = 2) -> None:
    from anisora.tasks.train import build_datamodule

    cfg = compose("train", overrides)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(method, datamodule=build_datamodule(cfg))


@pytest.mark.parametrize("lora", [False, True])
def test_optimizer_holds_only_trainable_weights_never_the_frozen_text_encoder(lora):
    method = method_from([*TINY, *(LORA if lora else [])])
    denoiser, encoder = method.backbone.denoiser, method.backbone.prompt_encoder.encoder
    student = {n: p for n, p in lora_parameters(denoiser).items() if ".default." in n}
    expected = {id(p) for p in (student.values() if lora else denoiser.parameters())}
    assert optimized(method) == expected
    assert not any(p.requires_grad for p in encoder.parameters())
    ema = [p for n, p in denoiser.named_parameters() if ".ema." in n] if lora else \
        list(method.roles.module("ema").parameters())
    assert ema and not any(p.requires_grad for p in ema)
    if lora:
        frozen = [n for n, p in denoiser.named_parameters() if "lora_" not in n]
        assert frozen and not any(denoiser.get_parameter(n).requires_grad for n in frozen)


def test_lora_training_moves_adapters_only_and_ema_follows_them():
    method = method_from([*TINY, *LORA, "optimizer.warmup_steps=0", "optimizer.ema_decay=0.5"])
    denoiser = method.backbone.denoiser
    before = {n: p.detach().clone() for n, p in denoiser.named_parameters()}
    text_before = [p.detach().clone() for p in method.backbone.prompt_encoder.encoder.parameters()]
    fit(method, [*TINY, *LORA])
    after = dict(denoiser.named_parameters())
    ema = {n.replace(".ema.", ".default."): p for n, p in after.items() if ".ema." in n}  # the EMA adapter
    adapters = [n for n in after if "lora_B.default." in n]
    assert adapters and all(not torch.equal(after[n], before[n]) for n in adapters)  # B starts at zero, then learns
    for name, value in after.items():
        if "lora_" not in name:
            assert torch.equal(value, before[name]), name
            assert value.grad is None, name
    for name in adapters:  # EMA with decay 0.5 sits between the start and the trained adapters
        assert not torch.equal(ema[name], before[name]) and not torch.equal(ema[name], after[name])
    for p, q in zip(method.backbone.prompt_encoder.encoder.parameters(), text_before):
        assert torch.equal(p, q) and p.grad is None


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.lora.targets=[to_qq]"], "model.lora.targets: 'to_qq' matches no module of WanTransformer3DModel; "
                                     "layers of a block: attn1.to_q, attn1.to_k"),
    (["model.lora.targets=[attn1]"], "model.lora.targets: 'attn1' names WanAttention, not a linear layer"),
    (["model.lora.targets=[]"], "model.lora.targets: must name at least one module; e.g. attn1.to_q"),
    (["model.lora.alpha=0"], "model.lora.alpha: must be > 0; got 0.0"),
])
def test_bad_lora_settings_fail_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as info:
        method_from([*TINY, *LORA, *overrides])
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_bad_lora_target_from_the_command_line_writes_nothing(tmp_path):
    log_dir = tmp_path / "outputs"
    out = run_entry("train.py", *TINY, *LORA, "model.lora.targets=[to_q,proj_nope]", log_dir=log_dir)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.lora.targets: 'proj_nope' matches no module")
    assert list_files(log_dir) == [] and not log_dir.exists()


# ----------------------------------------------------------------------------------- exact resume
STEPS = 16
RESUME = [*TINY, *LORA, f"trainer.max_steps={STEPS}", "callbacks.checkpoint_every_n_steps=4",
          "trainer.val_every_n_steps=8", "trainer.log_every_n_steps=4", "optimizer.warmup_steps=4", "logger=none"]


@pytest.mark.slow
def test_killed_lora_run_resumes_to_the_same_adapters(tmp_path):
    runs = killed_and_resumed(tmp_path, RESUME, STEPS)
    weights = assert_same_last_checkpoints(runs["full"], runs["resumed"], STEPS)
    adapters = [k for k in weights if "lora_" in k]
    assert adapters and any(".ema." in k for k in adapters)


# ----------------------------------------------------------------------------------- export
def test_trained_wan_lora_exports_and_loads_in_the_stock_pipeline(tmp_path):
    from anisora.backbones import build_backbone
    from anisora.backbones.export import export_lora, stock_pipeline

    method = method_from([*WAN, *LORA, "optimizer.warmup_steps=0", "optimizer.ema_decay=0"])
    fit(method, WAN)
    tuned = method.backbone.denoiser.eval()
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in tuned.named_parameters() if "lora_B" in n)
    dst = export_lora(method.backbone, tmp_path / "lora")
    assert (dst / "pytorch_lora_weights.safetensors").is_file()

    base = OmegaConf.to_container(compose("train", WAN).model, resolve=True)  # rank 0: the same base weights
    stock = stock_pipeline(build_backbone(base))
    x = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = stock.transformer(x, torch.tensor([500.0]), text, return_dict=False)[0]
        stock.load_lora_weights(dst)
        after = stock.transformer(x, torch.tensor([500.0]), text, return_dict=False)[0]
        ours = tuned(x, torch.tensor([500.0]), text, return_dict=False)[0]
    assert not torch.allclose(before, ours, atol=1e-5)
    torch.testing.assert_close(after, ours, atol=1e-5, rtol=1e-4)


def test_lora_base_and_frozen_encoders_in_bf16_are_shared_with_ema_and_train_under_autocast():
    composed = compose("train", [*TINY, *LORA, "optimizer.warmup_steps=0", "optimizer.ema_decay=0.5"])
    cfg = {k: OmegaConf.to_container(composed[k], resolve=True) for k in ("model", "guide", "optimizer", "sampler")}
    method = SFTMethod(**cfg, max_steps=2, frozen_dtype="bfloat16")
    denoiser = method.backbone.denoiser
    base = {n: p for n, p in denoiser.named_parameters() if "lora_" not in n}
    assert base and all(p.dtype == torch.bfloat16 for p in base.values())  # one base for the student and its EMA
    ema = [p for n, p in lora_parameters(denoiser).items() if ".ema." in n]
    assert ema and all(p.dtype == torch.float32 for p in lora_parameters(denoiser).values())
    assert all(p.dtype == torch.bfloat16 for p in method.backbone.prompt_encoder.encoder.parameters())
    before = {n: p.detach().clone() for n, p in lora_parameters(denoiser).items()}
    cfg_data = compose("train", [*TINY, *LORA])
    from anisora.tasks.train import build_datamodule

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         precision="bf16-mixed")
    trainer.fit(method, datamodule=build_datamodule(cfg_data))
    after = lora_parameters(denoiser)
    assert any(not torch.equal(after[n], before[n]) for n in after if "lora_B.default." in n)
    assert all(p.dtype == torch.float32 for p in after.values())


@pytest.mark.parametrize(("setting", "precision", "strategy", "expected"), [
    ("auto", "bf16-mixed", "single", torch.bfloat16), ("auto", "bf16-mixed", "ddp", torch.bfloat16),
    ("auto", "bf16-mixed", "fsdp", torch.float32), ("auto", "32-true", "single", torch.float32),
    ("float32", "bf16-mixed", "single", torch.float32), ("bfloat16", "bf16-mixed", "ddp", torch.bfloat16),
])
def test_frozen_dtype_resolves_per_precision_and_strategy(setting, precision, strategy, expected):
    from anisora.backbones.frozen_dtype import resolve_frozen_dtype

    assert resolve_frozen_dtype(setting, precision, strategy) == expected


@pytest.mark.parametrize(("precision", "strategy", "expected"), [
    ("32-true", "single", "trainer.frozen_dtype: bfloat16 needs accelerator.precision=bf16-mixed (got 32-true)"),
    ("bf16-mixed", "fsdp", "trainer.frozen_dtype: bfloat16 cannot combine with strategy=fsdp"),
])
def test_bf16_frozen_weights_where_they_cannot_work_fail_in_one_line(precision, strategy, expected):
    from anisora.backbones.frozen_dtype import resolve_frozen_dtype

    with pytest.raises(ConfigError) as info:
        resolve_frozen_dtype("bfloat16", precision, strategy)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_fp32_adapters_on_a_bf16_base_under_autocast_skip_peft_s_fp32_copy_of_the_input():
    """Under bf16 autocast the adapted layer's input is not copied to fp32 (autocast would cast it straight back
    for the matmul): same output, no full-size fp32 copy. Outside autocast peft's cast stays, so fp32 adapters
    still take a bf16 input."""
    from peft import LoraConfig, inject_adapter_in_model
    from torch.utils._python_dispatch import TorchDispatchMode

    from anisora.backbones.lora import keep_input_dtype_under_autocast

    class FloatCopies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and out.dtype == torch.float32:
                self.shapes.append(tuple(out.shape))
            return out

    def adapted():
        torch.manual_seed(0)
        model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["proj"], init_lora_weights=False),
                                        torch.nn.Sequential(collections.OrderedDict(proj=torch.nn.Linear(16, 8))))
        for name, p in model.named_parameters():
            p.data = p.data.float() if "lora_" in name else p.data.bfloat16()  # as trainer.frozen_dtype=auto
        return model

    x = torch.randn(32, 16, dtype=torch.bfloat16)
    stock, ours = adapted(), adapted()
    keep_input_dtype_under_autocast(ours)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with FloatCopies() as seen_stock:
            expected = stock(x)
        with FloatCopies() as seen_ours:
            got = ours(x)
    assert (32, 16) in seen_stock.shapes and (32, 16) not in seen_ours.shapes
    assert torch.equal(got, expected)
    assert ours(x).dtype == torch.bfloat16  # no autocast: peft casts for the fp32 adapters, as before
    ours.to("meta")  # where the benchmarks count FLOPs: the meta device has no autocast to ask
    assert ours(x.to("meta")).shape == (32, 8)


TINY_I2V = dict(  # a Wan I2V backbone small enough to build in a test: every part, one layer each
    variant="i2v", num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=16, in_channels=36, text_dim=16,
    freq_dim=8, image_dim=16, added_kv_proj_dim=16, text_layers=1, text_heads=2, text_ff=16, text_vocab=64,
    clip_layers=1, clip_heads=2, clip_ff=16, clip_image_size=28, clip_patch=14, vae_base_dim=8, max_sequence_length=8)


def test_a_lora_base_is_built_in_its_frozen_dtype_and_its_adapters_stay_fp32(monkeypatch):
    """Wan-14B's base in fp32 (65.6 GB) beside UMT5-XXL would not fit an 80 GB card: the base is built in bf16."""
    import anisora.methods.base as base_module
    from anisora.backbones.wan_loading import build

    asked = []
    real = base_module.build_backbone
    monkeypatch.setattr(base_module, "build_backbone", lambda model, dtype=None: asked.append(dtype) or
                        real(model, dtype))
    composed = compose("train", [*TINY, *LORA])
    cfg = {k: OmegaConf.to_container(composed[k], resolve=True) for k in ("model", "guide", "optimizer", "sampler")}
    SFTMethod(**cfg, max_steps=2, frozen_dtype="bfloat16")
    composed = compose("train", TINY)
    cfg = {k: OmegaConf.to_container(composed[k], resolve=True) for k in ("model", "guide", "optimizer", "sampler")}
    full = SFTMethod(**cfg, max_steps=2, frozen_dtype="bfloat16")
    assert asked == [torch.bfloat16, None]  # a full fine-tune keeps fp32 master weights
    assert all(p.dtype == torch.float32 for p in full.backbone.denoiser.parameters())
    wan = build(torch.bfloat16, **TINY_I2V)
    assert {p.dtype for p in wan.denoiser.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in wan.prompt_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in wan.image_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in wan.codec.parameters()} == {torch.float32}  # the VAE stays fp32, as loading keeps it


def test_a_random_build_under_a_bf16_default_dtype_stays_bf16():
    """The benchmarks build Wan-14B under a bf16 default dtype: cast up to fp32 it fills an 80 GB card at build."""
    from anisora.backbones.wan_loading import WanSpec, build_random_wan

    spec = WanSpec(**TINY_I2V)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        wan = build_random_wan(spec)
    finally:
        torch.set_default_dtype(before)
    assert {p.dtype for p in wan.denoiser.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in wan.prompt_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in build_random_wan(spec).denoiser.parameters()} == {torch.float32}
