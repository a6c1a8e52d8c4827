"""The strategy group: every option composes with every accelerator; DDP, FSDP (and DeepSpeed ZeRO-2 where
installed) train the tiny model on CPU processes over gloo and reach the weights one process reaches on the
same clips; activation checkpointing leaves gradients as they were; DeepSpeed missing is one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import ROOT, TINY, compose, killed_and_resumed, list_files, read_checkpoint, run_entry, with_fake_npu
from omegaconf import OmegaConf

from anisora.accelerators.devices import trainer_device_kwargs
from anisora.accelerators.strategies import AnyDeviceDeepSpeedStrategy, AnyDeviceFSDPStrategy, StrategySpec, check_ema
from anisora.backbones.checkpointing import apply_activation_checkpointing, checkpointed_blocks, evenly_spaced
from anisora.config.errors import ConfigError
from anisora.config.validate import check_node

STRATEGIES = sorted(p.stem for p in (ROOT / "conf" / "strategy").glob("*.yaml"))
ACCELERATORS = ["cpu", "gpu", "npu", "auto"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
NO_DEEPSPEED = "deepspeed is an optional extra (pip install 'anisora[deepspeed]') and is not installed here"
# two steps at a learning rate that moves the weights; plain MSE (a weighted loss is normalised per batch, so per
# rank under data parallelism); no EMA (sharded strategies refuse it); no sampling
RUN = [*TINY, "trainer.max_steps=2", "model.objective.motion_weight=0", "optimizer.warmup_steps=0",
       "optimizer.ema_decay=0", "logger=none", "callbacks.sample_videos=false", "trainer.log_every_n_steps=1"]


@pytest.mark.parametrize("accelerator", ACCELERATORS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_composes_with_every_accelerator(strategy, accelerator):
    cfg = compose("train", [f"strategy={strategy}", f"accelerator={accelerator}"])
    check_node(cfg, "")
    assert OmegaConf.get_type(cfg.strategy).__name__ == "StrategyConfig"
    spec = StrategySpec.of(OmegaConf.to_container(cfg.strategy))
    assert spec.name == strategy.split("_")[0]
    if accelerator != "cpu" or (spec.name == "deepspeed" and not HAS_DEEPSPEED):
        return  # composition only: no GPU or NPU here
    devices = 1 if spec.name == "single" else 2
    kwargs = trainer_device_kwargs("cpu", devices, spec, "32-true", {torch.nn.Linear})
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, **{k: v for k, v in kwargs.items()
                                                                      if k != "plugins"})
    expected = {"single": "SingleDeviceStrategy", "ddp": "DDPStrategy", "fsdp": "AnyDeviceFSDPStrategy",
                "deepspeed": "AnyDeviceDeepSpeedStrategy"}[spec.name]
    assert type(trainer.strategy).__name__ == expected
    if spec.name != "single":
        assert trainer.strategy.process_group_backend in (None, "gloo") and trainer.num_devices == devices


def test_strategy_options_reach_the_lightning_objects():
    fsdp = trainer_device_kwargs("gpu", 4, {"name": "fsdp", "state_dict_type": "sharded",
                                            "sharding_strategy": "SHARD_GRAD_OP"}, "bf16-mixed", {torch.nn.Linear})
    strategy = fsdp["strategy"]
    assert isinstance(strategy, AnyDeviceFSDPStrategy) and strategy.process_group_backend == "nccl"
    assert strategy._state_dict_type == "sharded" and strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {torch.nn.Linear}
    ddp = trainer_device_kwargs("gpu", 2, {"name": "ddp", "find_unused_parameters": True}, "bf16-mixed")
    assert ddp["strategy"]._ddp_kwargs["find_unused_parameters"] and ddp["strategy"].process_group_backend == "nccl"
    if HAS_DEEPSPEED:
        zero3 = trainer_device_kwargs("gpu", 8, OmegaConf.to_container(compose(
            "train", ["strategy=deepspeed_zero3_offload"]).strategy), "bf16-mixed")["strategy"]
        assert isinstance(zero3, AnyDeviceDeepSpeedStrategy)
        zero = zero3.config["zero_optimization"]
        assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
        assert zero["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize(("strategy", "devices", "ema", "expected"), [
    ("single", 2, 0.0, "strategy: single runs on one device, but accelerator.devices=2"),
])
def test_impossible_combinations_fail_in_one_line(strategy, devices, ema, expected):
    with pytest.raises(ConfigError) as info:
        spec = StrategySpec.of(strategy)
        trainer_device_kwargs("cpu", devices, spec, "32-true")
        check_ema(spec, ema)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_ema_under_zero3_fails_in_one_line_and_is_allowed_under_fsdp():
    with pytest.raises(ConfigError) as info:
        check_ema(StrategySpec.of({"name": "deepspeed", "stage": 3}), 0.995)
    assert str(info.value).startswith("optimizer.ema_decay: EMA cannot pair ZeRO-3") and "\n" not in str(info.value)
    check_ema(StrategySpec.of("fsdp"), 0.995)


NPU_SCRIPT = textwrap.dedent("""
    import json, torch
    import fake_torch_npu
    import lightning.pytorch as pl
    from anisora.accelerators.devices import trainer_device_kwargs

    out = {}
    for name in ("single", "ddp", "fsdp"):
        kwargs = trainer_device_kwargs("npu", 1 if name == "single" else 2, {"name": name}, "bf16-mixed",
                                       {torch.nn.Linear})
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, **kwargs)
        s = trainer.strategy
        policy = getattr(s, "kwargs", {}).get("auto_wrap_policy")
        out[name] = [type(s).__name__, getattr(s, "process_group_backend", None),
                     sorted(c.__name__ for c in getattr(policy, "_module_classes", []))]
    print(json.dumps(out))
""")


def test_on_an_npu_the_group_builds_npu_strategies_with_hccl_and_block_wrapping():
    out = with_fake_npu(NPU_SCRIPT)
    assert out == {"single": ["SingleNPUStrategy", None, []], "ddp": ["NPUDDPStrategy", "hccl", []],
                   "fsdp": ["NPUFSDPStrategy", "hccl", ["Linear"]]}


# ----------------------------------------------------------------------------------- training on CPU processes
def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / "last.ckpt"
    if path.is_dir():  # DeepSpeed: a folder of ZeRO shards, consolidated into one Lightning checkpoint
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        convert_zero_checkpoint_to_fp32_state_dict(path, run_dir / "consolidated.ckpt")
        path = run_dir / "consolidated.ckpt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    return state["state_dict"]


def train(tmp: Path, name: str, *overrides: str) -> dict[str, torch.Tensor]:
    out = run_entry("train.py", *RUN, *overrides, log_dir=tmp / name, run_dir=tmp / name / "run", timeout=240)
    assert out.returncode == 0, out.stderr[-4000:]
    return final_weights(tmp / name / "run")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """One process, batches of 4 clips: what the data-parallel runs must reproduce."""
    from anisora.backbones import build_backbone

    tmp = tmp_path_factory.mktemp("strategies")
    weights = train(tmp, "single", "data.batch_size=4")
    model = OmegaConf.to_container(compose("train", TINY).model, resolve=True)
    initial = {f"backbone.{k}": v for k, v in build_backbone(model).state_dict().items()}
    moved = max((weights[k] - initial[k]).abs().max().item() for k in initial if k.startswith("backbone.denoiser."))
    assert moved > 1e-3  # the runs compared below really trained
    return tmp, weights


def assert_same_training(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    keys = [k for k in reference if k.startswith("backbone.denoiser.")]
    assert keys and set(keys) <= set(other)
    for key in keys:
        torch.testing.assert_close(other[key].float(), reference[key].float(), atol=2e-5, rtol=1e-4, msg=key)


def test_ddp_two_gloo_processes_with_accumulation_match_one_process(single):
    """2 ranks x batch 1 x 2 accumulated batches = the same 4 clips per step as one process with batch 4."""
    tmp, reference = single
    ddp = train(tmp, "ddp", "strategy=ddp", "accelerator.devices=2", "data.batch_size=1",
                "trainer.accumulate_grad_batches=2")
    assert_same_training(reference, ddp)
    record = (tmp / "ddp" / "run" / "config.yaml").read_text()
    assert "name: ddp" in record


def test_fsdp_on_cpu_wraps_each_block_and_matches_one_process(single):
    tmp, reference = single
    fsdp = train(tmp, "fsdp", "strategy=fsdp", "accelerator.devices=2", "data.batch_size=2")
    assert_same_training(reference, fsdp)
    assert not any("_fsdp_wrapped_module" in k for k in fsdp)  # a full state dict, loadable without FSDP


@pytest.mark.slow
def test_sharded_fsdp_checkpoints_are_whole_folders_and_a_killed_run_resumes_exactly(tmp_path):
    """Every rank writes its shard into one hidden folder that replaces the checkpoint only when all are done
    (killed mid-run, possibly mid-save); resumed with ckpt_path=last, the run reaches the uninterrupted weights."""
    steps = 8
    overrides = [*[o for o in RUN if not o.startswith("trainer.max_steps")], f"trainer.max_steps={steps}",
                 "callbacks.checkpoint_every_n_steps=2", "strategy=fsdp", "strategy.state_dict_type=sharded",
                 "accelerator.devices=2", "data.batch_size=2"]
    runs = killed_and_resumed(tmp_path, overrides, steps, every=2)
    for name, run in runs.items():
        hidden = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        # finished runs leave nothing hidden; a kill mid-delete of an old folder may leave it hidden, never visible
        assert not hidden if name != "killed" else all(".ckpt.removed-" in h for h in hidden), hidden
    assert (runs["resumed"] / "checkpoints" / "last.ckpt" / "meta.pt").is_file()  # a sharded folder
    step, reference = read_checkpoint(runs["full"] / "checkpoints" / "last.ckpt")
    resumed_step, resumed = read_checkpoint(runs["resumed"] / "checkpoints" / "last.ckpt")
    keys = [k for k in reference if k.startswith("backbone.denoiser.")]
    assert step == resumed_step == steps and keys and set(keys) <= set(resumed)
    for key in keys:
        torch.testing.assert_close(resumed[key], reference[key], atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_ema_role_under_fsdp_on_two_processes_matches_one_process(tmp_path):
    """The EMA role is a copy FSDP shards like the denoiser it follows: each rank averages its own shard, and the
    gathered EMA equals one process's."""
    ema = ["optimizer.ema_decay=0.5"]
    reference = train(tmp_path, "single_ema", *ema, "data.batch_size=4")
    fsdp = train(tmp_path, "fsdp_ema", *ema, "strategy=fsdp", "accelerator.devices=2", "data.batch_size=2")
    keys = [k for k in reference if k.startswith("roles.copies.ema.")]
    assert keys and set(keys) <= set(fsdp)
    start = {f"roles.copies.ema.{k.removeprefix('backbone.denoiser.')}": v for k, v in reference.items()
             if k.startswith("backbone.denoiser.")}
    assert any(not torch.equal(reference[k], start[k]) for k in keys)  # the EMA moved off the trained weights
    for key in keys:
        torch.testing.assert_close(fsdp[key].float(), reference[key].float(), atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_sequence_parallel_over_two_ranks_matches_one_process(single):
    """Both ranks split each of the same 4 clips' token sequence (Ulysses over the 2 heads): the weights after
    2 steps equal one process training on those 4 clips."""
    tmp, reference = single
    out = run_entry("train.py", *RUN, "strategy=ddp", "accelerator.devices=2", "trainer.sequence_parallel=2",
                    "data.batch_size=4", log_dir=tmp / "sp", run_dir=tmp / "sp" / "run", timeout=240)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "sequence parallel: each sample's tokens split over 2 ranks" in out.stdout + out.stderr
    assert_same_training(reference, final_weights(tmp / "sp" / "run"))


def test_sequence_parallel_without_ddp_fails_in_one_line(tmp_path):
    out = run_entry("train.py", *TINY, "trainer.sequence_parallel=2", log_dir=tmp_path / "outputs")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("error: trainer.sequence_parallel: 2 needs strategy=ddp over a "
                                                   "multiple of 2 devices; got strategy=single with "
                                                   "accelerator.devices=1")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.skipif(not HAS_DEEPSPEED, reason=NO_DEEPSPEED)
@pytest.mark.slow
def test_deepspeed_zero2_trains_on_cpu_and_matches_one_process(single):
    tmp, reference = single
    zero2 = train(tmp, "zero2", "strategy=deepspeed_zero2", "data.batch_size=4")
    assert_same_training(reference, zero2)


BLOCK_DEEPSPEED = "import runpy, sys; sys.modules['deepspeed'] = None; sys.argv = {argv!r}; " \
                  "runpy.run_path({script!r}, run_name='__main__')"


def test_deepspeed_strategy_without_deepspeed_is_one_line_exit_2_and_writes_nothing(tmp_path):
    """Runs train.py as a user would, with `import deepspeed` failing as on a machine without it."""
    log_dir = tmp_path / "outputs"
    argv = ["train.py", f"paths.log_dir={log_dir}", "strategy=deepspeed_zero2", *TINY]
    code = BLOCK_DEEPSPEED.format(argv=argv, script=str(ROOT / "train.py"))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: strategy: deepspeed needs the DeepSpeed package: "
                                                   "pip install 'anisora[deepspeed]'"), out.stderr[-2000:]
    assert list_files(log_dir) == [] and not log_dir.exists()


# ----------------------------------------------------------------------------------- activation checkpointing
def tiny_backbone(layers: int = 4):
    from anisora.backbones.tiny import TinyBackboneSpec, build_tiny_backbone

    return build_tiny_backbone(TinyBackboneSpec(num_layers=layers, num_attention_heads=2, attention_head_dim=8,
                                                ffn_dim=32, text_dim=16, text_layers=1, text_heads=2))


def counting(forward, calls: list[int], index: int):
    def run(*args, **kwargs):
        calls[index] += 1
        return forward(*args, **kwargs)

    return run


def denoiser_grads(mode: str, fraction: float = 0.5) -> tuple[dict[str, torch.Tensor], list[int]]:
    from anisora.backbones.base import Conditioning

    backbone = tiny_backbone()
    picked = apply_activation_checkpointing(backbone, mode, fraction)
    gen = torch.Generator().manual_seed(3)
    latent, extra = backbone.latent_channels, backbone.denoiser.config.in_channels - backbone.latent_channels
    noisy = torch.randn(2, latent, 2, 4, 4, generator=gen)
    cond = Conditioning(text=torch.randn(2, 8, 16, generator=gen), guide=torch.randn(2, extra, 2, 4, 4, generator=gen))
    calls = [0] * len(backbone.denoiser_blocks())
    for i, block in enumerate(backbone.denoiser_blocks()):  # count forward runs (recomputation skips hooks)
        block.forward = counting(block.forward, calls, i)
    pred = backbone.denoise(noisy, torch.tensor([100.0, 700.0]), cond)
    pred.square().mean().backward()
    recomputed = [i for i, n in enumerate(calls) if n == 2]  # ran again in backward
    assert recomputed == picked and all(n in (1, 2) for n in calls)
    return {n: p.grad.clone() for n, p in backbone.denoiser.named_parameters() if p.grad is not None}, picked


def test_activation_checkpointing_keeps_gradients():
    plain, none = denoiser_grads("none")
    assert none == [] and plain
    for mode, fraction, expected in (("full", 0.5, [0, 1, 2, 3]), ("selective", 0.5, [0, 2]),
                                     ("selective", 0.25, [0]), ("ops", 0.5, [0, 1, 2, 3])):
        grads, picked = denoiser_grads(mode, fraction)
        assert picked == expected
        assert grads.keys() == plain.keys()
        for name in plain:
            torch.testing.assert_close(grads[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def backward_op_counts(mode: str) -> Counter:
    """aten ops run during one backward pass of the tiny denoiser under `mode` (recomputation shows up here)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from anisora.backbones.base import Conditioning

    class CountOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    backbone = tiny_backbone()
    apply_activation_checkpointing(backbone, mode)
    gen = torch.Generator().manual_seed(3)
    latent, extra = backbone.latent_channels, backbone.denoiser.config.in_channels - backbone.latent_channels
    noisy = torch.randn(2, latent, 2, 4, 4, generator=gen)
    cond = Conditioning(text=torch.randn(2, 8, 16, generator=gen), guide=torch.randn(2, extra, 2, 4, 4, generator=gen))
    loss = backbone.denoise(noisy, torch.tensor([100.0, 700.0]), cond).square().mean()
    with CountOps() as counter:
        loss.backward()
    return counter.counts


def test_ops_checkpointing_recomputes_elementwise_work_but_no_matmul_or_attention():
    heavy = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu")
    none, ops, full = (backward_op_counts(m) for m in ("none", "ops", "full"))
    assert sum(full[k] for k in heavy) > sum(none[k] for k in heavy)  # full reruns the matmuls and attention
    assert all(ops[k] == none[k] for k in heavy), {k: (none[k], ops[k]) for k in heavy}
    assert sum(ops.values()) > sum(none.values())  # ... while ops reruns only the cheap rest


def test_selective_checkpointing_spreads_blocks_and_marks_them():
    assert evenly_spaced(40, 0.5) == list(range(0, 40, 2)) and evenly_spaced(30, 0.0) == []
    assert evenly_spaced(4, 1.0) == [0, 1, 2, 3] and len(evenly_spaced(40, 0.3)) == 12 and evenly_spaced(1, 0.5) == [0]
    backbone = tiny_backbone()
    apply_activation_checkpointing(backbone, "selective", 0.5)
    assert checkpointed_blocks(backbone) == [0, 2] and backbone.denoiser.gradient_checkpointing
