"""accelerator=npu on a real device: tensors live on "npu", compute, train (one process, and DDP over two),
checkpoint and resume.

The device is PyTorch's PrivateUse1 backend renamed to "npu", with a small C++ extension compiled here
(tests/npu_stand_in/openreg_npu.cpp): its own allocator over host memory, device guard, hooks, memory
and view kernels, and PyTorch's CPU kernels for everything else. So the NPU accelerator, strategy and
precision plugin drive a device that Lightning and torch treat as a non-CUDA accelerator, and the numbers
must match a CPU run. The rename is process-wide, so everything on the device runs in subprocesses.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

STAND_IN = ROOT / "tests" / "npu_stand_in"
NPU_TINY = [o for o in TINY if not o.startswith("accelerator=")]
RUN = ["trainer.log_every_n_steps=1", "callbacks.checkpoint_every_n_steps=2", "callbacks.sample_videos=false",
       "logger=csv", "optimizer.warmup_steps=2"]
# the npu group defaults to torch_npu's fused attention and bf16; the loss comparison wants fp32 SDPA
ON_NPU = ["accelerator=npu", "accelerator.precision=32-true", "accelerator.attention_backend=null"]


@pytest.fixture(scope="module")
def npu_env() -> dict[str, str]:
    """The environment of a process that has the npu device, which is compiled here if no build is cached
    (in $ANISORA_NPU_BUILD_DIR or ~/.cache/anisora/openreg_npu, see openreg_build)."""
    path = os.pathsep.join([str(STAND_IN), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, ANISORA_NPU_TEST_BACKEND="openreg_npu", PYTHONUNBUFFERED="1")
    probe = subprocess.run([sys.executable, "-c", "import openreg_build; print(openreg_build.compiler() or '')"],
                           capture_output=True, text=True, env=env, timeout=60)
    if probe.returncode == 0 and not probe.stdout.strip():
        pytest.skip("no C++ compiler (g++ or $CXX): the npu test device is compiled at test time")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(STAND_IN / "openreg_build.py")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"npu test device ready in {time.perf_counter() - start:.1f}s: {done.stdout.strip()}")
    return env


def on_npu(script: str, env: dict[str, str], timeout: float = 300) -> dict:
    """Run `script` in a process where the device is installed; its last stdout line is JSON."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


OPS = """
    import io, json
    import torch
    import torch.nn.functional as F
    import openreg_npu  # noqa: F401
    from diffusers import WanTransformer3DModel

    def close(npu, cpu, name):
        assert npu.device.type == "npu", (name, npu.device)
        torch.testing.assert_close(npu.cpu(), cpu, msg=name)

    torch.manual_seed(0)
    out = {}
    x, w = torch.randn(6, 8), torch.randn(8, 5)
    before = torch.npu.memory_allocated(0)
    a = x.to("npu")
    out.update(device=str(a.device), is_npu=a.is_npu, allocated=torch.npu.memory_allocated(0) - before)
    close(a @ w.npu(), x @ w, "matmul")
    close(F.softmax(a, -1), F.softmax(x, -1), "softmax")
    close(a.t().contiguous()[2:4], x.t()[2:4], "strided copy")

    v = a.view(-1)  # views share the device memory
    v[0] = 7.0
    out["view_aliases"] = a[0, 0].item() == 7.0 and v.device == a.device

    other = a.to("npu:1")
    out.update(second=str(other.device), cross_equal=torch.equal(other.cpu(), a.cpu()),
               second_allocated=torch.npu.memory_allocated(1))

    conv = torch.nn.Conv3d(3, 4, 3, padding=1)
    clip = torch.randn(2, 3, 5, 8, 8, requires_grad=True)
    conv_npu = torch.nn.Conv3d(3, 4, 3, padding=1).npu()
    conv_npu.load_state_dict(conv.state_dict())
    clip_npu = clip.detach().npu().requires_grad_()
    conv(clip).square().mean().backward()
    conv_npu(clip_npu).square().mean().backward()
    close(clip_npu.grad, clip.grad, "conv3d input grad")
    close(conv_npu.weight.grad, conv.weight.grad, "conv3d weight grad")
    out["param_device"] = str(conv_npu.weight.device)

    q, k, val = (torch.randn(2, 2, 10, 8, requires_grad=True) for _ in range(3))
    qn, kn, vn = (t.detach().npu().requires_grad_() for t in (q, k, val))
    F.scaled_dot_product_attention(q, k, val).sum().backward()
    F.scaled_dot_product_attention(qn, kn, vn).sum().backward()
    close(qn.grad, q.grad, "sdpa grad")

    # Wan2.1's transformer, as the tiny backbone builds it, forward and backward on the device
    wan = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=28,
                                out_channels=12, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    wan_npu = WanTransformer3DModel.from_config(wan.config).npu()
    wan_npu.load_state_dict(wan.state_dict())
    latents, text, t = torch.randn(2, 28, 2, 8, 8), torch.randn(2, 7, 16), torch.tensor([300, 700])
    cpu_out = wan(latents, t, text, return_dict=False)[0]
    npu_out = wan_npu(latents.npu(), t.npu(), text.npu(), return_dict=False)[0]
    close(npu_out, cpu_out.detach(), "wan forward")
    cpu_out.square().mean().backward()
    npu_out.square().mean().backward()
    for (name, p), p_npu in zip(wan.named_parameters(), wan_npu.parameters()):
        close(p_npu.grad, p.grad, f"wan grad {name}")

    with torch.autocast("npu", dtype=torch.bfloat16):
        low, kept = F.linear(a, w.t().npu()), a + 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_cpu = F.linear(a.cpu(), w.t())
    out.update(autocast_linear=str(low.dtype), autocast_add=str(kept.dtype))
    close(low, low_cpu, "autocast linear")

    buf = io.BytesIO()
    torch.save({"w": conv_npu.weight, "x": a}, buf)
    buf.seek(0)
    on_cpu = torch.load(buf, map_location="cpu")
    buf.seek(0)
    back = torch.load(buf)
    out.update(loaded_cpu=str(on_cpu["w"].device), loaded=str(back["x"].device),
               saved_equal=torch.equal(on_cpu["w"], conv_npu.weight.detach().cpu()))
    print(json.dumps(out))
"""


def test_tensors_live_on_the_npu_and_compute_like_the_cpu(npu_env):
    out = on_npu(OPS, npu_env)
    assert out["device"] == "npu:0" and out["is_npu"] and out["allocated"] >= 6 * 8 * 4
    assert out["view_aliases"] and out["param_device"] == "npu:0"
    assert out["second"] == "npu:1" and out["cross_equal"] and out["second_allocated"] >= 6 * 8 * 4
    assert out["autocast_linear"] == "torch.bfloat16" and out["autocast_add"] == "torch.float32"
    assert out["loaded_cpu"] == "cpu" and out["loaded"] == "npu:0" and out["saved_equal"]


LIGHTNING = """
    import json
    import torch
    import lightning.pytorch as pl
    import openreg_npu  # noqa: F401
    from anisora.accelerators.devices import resolve_device, trainer_device_kwargs
    from anisora.accelerators.npu import npu_precision_plugin

    out = {"device": str(resolve_device("npu"))}
    kwargs = trainer_device_kwargs("npu", 1, "auto", "32-true")
    out["fp32"] = [type(kwargs["accelerator"]).__name__, type(kwargs["strategy"]).__name__,
                   str(kwargs["strategy"].root_device), type(kwargs["plugins"][0]).__name__]

    layer = torch.nn.Linear(4, 3).npu()
    with npu_precision_plugin("bf16-mixed").forward_context():
        out["plugin_autocast"] = str(layer(torch.randn(2, 4, device="npu")).dtype)

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.GELU(),
                                           torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 4 * 4, 1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            pred = self.net(x)
            state = self.optimizers().optimizer.state.values()  # AdamW's moments, after the first step
            self.seen.append({"batch": str(x.device), "param": str(self.net[0].weight.device),
                              "param_dtype": str(self.net[0].weight.dtype), "activation": str(pred.dtype),
                              "optimizer_state": sorted({str(s["exp_avg"].device) for s in state})})
            return torch.nn.functional.mse_loss(pred.float(), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 2, 3, 4, 4), torch.randn(8, 1))
    model = Probe()
    start = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(**trainer_device_kwargs("npu", 1, "auto", "bf16-mixed"), max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         gradient_clip_val=1.0)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    out.update(seen=model.seen, step=trainer.global_step, root=str(trainer.strategy.root_device),
               strategy=type(trainer.strategy).__name__, precision=type(trainer.precision_plugin).__name__,
               moved=all(not torch.equal(a, b.cpu()) for a, b in zip(start, model.parameters())),
               stats=sorted(trainer.accelerator.get_device_stats(trainer.strategy.root_device)))
    print(json.dumps(out))
"""


def test_lightning_trains_on_the_npu_with_npu_strategy_and_bf16_autocast(npu_env):
    out = on_npu(LIGHTNING, npu_env)
    assert out["device"] == "npu:0"
    assert out["fp32"] == ["NPUAccelerator", "SingleNPUStrategy", "npu:0", "Precision"]
    assert out["plugin_autocast"] == "torch.bfloat16"
    assert out["step"] == 2 and out["root"] == "npu:0" and out["strategy"] == "SingleNPUStrategy"
    assert out["precision"] == "MixedPrecision" and out["moved"]
    step = {"batch": "npu:0", "param": "npu:0", "param_dtype": "torch.float32", "activation": "torch.bfloat16"}
    assert out["seen"] == [{**step, "optimizer_state": []}, {**step, "optimizer_state": ["npu:0"]}]
    assert "allocated_bytes.all.current" in out["stats"]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> train/loss from the CSV logger (logged every step)."""
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(fh) if row.get("train/loss")}


def saved_on_npu(ckpt: Path) -> bool:
    """Were all weights (model and EMA) and both AdamW moments of every parameter saved from npu:0? torch.save
    records each storage's device. (AdamW's `step` counters and callback scalars live on the CPU by design.)"""
    seen: list[str] = []
    state = torch.load(ckpt, weights_only=False, map_location=lambda storage, where: seen.append(where) or storage)
    per_param = state["optimizer_states"][0]["state"].values()
    moments = sum(key.startswith("exp_avg") for entry in per_param for key in entry)
    return moments > 0 and seen.count("npu:0") == len(state["state_dict"]) + moments


@pytest.fixture(scope="module")
def runs(npu_env, tmp_path_factory) -> dict[str, Path]:
    """train.py on the npu for 2 steps, resumed with ckpt_path=last to 4; the same 4 steps on the CPU."""
    base = tmp_path_factory.mktemp("npu_train")
    npu_log = base / "npu"

    def train(*overrides: str, log_dir: Path, run_dir: Path, npu: bool = True) -> None:
        flags = [*NPU_TINY, *RUN, *(ON_NPU if npu else ["accelerator=cpu"]), *overrides]
        args = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", f"hydra.run.dir={run_dir}", *flags]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=npu_env if npu else dict(os.environ))
        assert done.returncode == 0, done.stderr[-4000:]

    train("trainer.max_steps=2", log_dir=npu_log, run_dir=npu_log / "train" / "first")
    train("trainer.max_steps=4", "ckpt_path=last", log_dir=npu_log, run_dir=npu_log / "train" / "resumed")
    train("trainer.max_steps=4", log_dir=base / "cpu", run_dir=base / "cpu" / "train" / "run", npu=False)
    return {"first": npu_log / "train" / "first", "resumed": npu_log / "train" / "resumed",
            "cpu": base / "cpu" / "train" / "run"}


def test_train_py_runs_on_the_npu_and_checkpoints_device_tensors(runs):
    # saved by ModelCheckpoint mid-fit (last.ckpt is rewritten after fit, when Lightning has moved all to CPU)
    ckpt = runs["first"] / "checkpoints" / "step000002.ckpt"
    assert saved_on_npu(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # and it opens on a machine without one
    assert state["global_step"] == 2 and all(t.device.type == "cpu" for t in state["state_dict"].values())
    assert "name: npu" in (runs["first"] / "config.yaml").read_text()


def test_npu_run_resumed_with_ckpt_path_last_matches_the_cpu_run(runs):
    first, resumed_losses, cpu = losses(runs["first"]), losses(runs["resumed"]), losses(runs["cpu"])
    assert sorted(first) == [0, 1] and sorted(resumed_losses) == [2, 3] and sorted(cpu) == [0, 1, 2, 3]
    npu = {**first, **resumed_losses}
    for step in cpu:
        assert npu[step] == pytest.approx(cpu[step], rel=1e-5, abs=1e-6), step
    resumed = torch.load(runs["resumed"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    reference = torch.load(runs["cpu"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == reference["global_step"] == 4
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert saved_on_npu(runs["resumed"] / "checkpoints" / "step000004.ckpt")


@pytest.mark.slow
def test_shard_training_on_the_npu_parks_frozen_encoders_on_the_cpu(npu_env, tmp_path):
    """data=shards: the DiT trains on the device while the frozen text encoder waits on the CPU; validation
    borrows it (samples are written) and the checkpoint records each part where it lived."""
    from test_shards import MODEL, WORLD

    from anisora.data.synthetic_export import export_world

    manifest = export_world(tmp_path / "src", WORLD, seed=0, count=8, clips_per_file=8)
    enc = subprocess.run([sys.executable, "-m", "anisora.tasks.data_cli", "encode", f"manifest={manifest}",
                          f"out={tmp_path / 'shards'}", "accelerator=cpu", "progress=false", "shard_max_samples=4",
                          f"hydra.run.dir={tmp_path / 'enc'}", *MODEL], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert enc.returncode == 0, enc.stderr[-3000:]
    run_dir = tmp_path / "train"
    args = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}", f"hydra.run.dir={run_dir}",
            *NPU_TINY, *ON_NPU, *[o for o in RUN if "sample_videos" not in o], "data=shards",
            f"data.urls='{tmp_path / 'shards'}/{{000000..000001}}.tar'", "trainer.max_steps=2",
            "trainer.val_every_n_steps=2", "data.shuffle_buffer=4"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=npu_env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert list((run_dir / "samples").glob("step000002_val*.mp4"))  # validation sampled with the encoders
    placed = on_npu(f"""
        import json, torch
        import openreg_npu
        state = torch.load({str(run_dir / "checkpoints" / "step000002.ckpt")!r}, weights_only=False)["state_dict"]
        print(json.dumps({{k: str(v.device) for k, v in state.items()}}))
    """, npu_env)
    encoder = {k: v for k, v in placed.items() if k.startswith("backbone.prompt_encoder.")}
    denoiser = {k: v for k, v in placed.items() if k.startswith("backbone.denoiser.")}
    assert encoder and set(encoder.values()) == {"cpu"}
    assert denoiser and set(denoiser.values()) == {"npu:0"}


@pytest.mark.slow
def test_ddp_over_two_npu_processes_matches_one_cpu_process(npu_env, tmp_path):
    """strategy=ddp on npu:0 and npu:1 (NPUDDPStrategy, "hccl": the stand-in's collectives over gloo), batch 2
    per rank, reaches after 2 steps the weights one CPU process reaches with batch 4 on the same clips: the
    gradients really were averaged across the two processes."""
    from test_strategies import RUN as STRATEGY_RUN
    from test_strategies import assert_same_training, final_weights

    def train(name: str, *overrides: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        args = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path / name}",
                f"hydra.run.dir={tmp_path / name / 'run'}", *STRATEGY_RUN, *overrides]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-4000:]
        return done

    train("cpu", "data.batch_size=4", env=dict(os.environ))
    ddp = train("npu", *ON_NPU, "strategy=ddp", "accelerator.devices=2", "data.batch_size=2",
                "callbacks.checkpoint_every_n_steps=2", env=npu_env)
    assert "distributed_backend=hccl" in ddp.stdout + ddp.stderr
    assert "Starting with 2 processes" in ddp.stdout + ddp.stderr
    reference, weights = final_weights(tmp_path / "cpu" / "run"), final_weights(tmp_path / "npu" / "run")
    assert_same_training(reference, weights)
    assert saved_on_npu(tmp_path / "npu" / "run" / "checkpoints" / "step000002.ckpt")
