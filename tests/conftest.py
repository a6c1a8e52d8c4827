"""Shared fixtures: offline environment, tiny overrides, and ways to run the entry points."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A model and world small enough that a training step takes milliseconds on a CPU.
TINY = [
    "model.num_layers=1",
    "model.num_attention_heads=2",
    "model.attention_head_dim=8",
    "model.ffn_dim=32",
    "model.text_dim=16",
    "model.text_layers=1",
    "model.text_heads=2",
    "data.batch_size=2",
    "data.val_clips=2",
    "sampler.num_steps=2",
    "accelerator=cpu",
    "callbacks.progress_bar=none",
]


@pytest.fixture(autouse=True)
def offline_env(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "cache"
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(cache / key.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_entry(script: str, *overrides: str, log_dir: Path, run_dir: Path | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run train.py / infer.py / evaluate.py as a user would, with outputs under `log_dir`."""
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m; argparse wants flags before overrides
    args = [sys.executable, str(ROOT / script), *flags, f"paths.log_dir={log_dir}",
            *[o for o in overrides if not o.startswith("-")]]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def compose(config_name: str, overrides: list[str]):
    """Compose a primary config in-process, with Hydra's runtime fields set like a real run."""
    from anisora.config.store import compose_in_process

    return compose_in_process(str(ROOT / "conf"), config_name, overrides)


def task_config(config_name: str, overrides: list[str]):
    """A primary config as @hydra.main hands it to its task: composed like a real run, writable, no hydra node."""
    from omegaconf import OmegaConf, open_dict

    cfg = compose(config_name, overrides)
    OmegaConf.set_readonly(cfg, False)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train_config(overrides: list[str], folder: Path):
    """train.py's config as a task sees it, writing under `folder`."""
    return task_config("train", [*overrides, f"paths.log_dir={folder}", f"paths.output_dir={folder}"])


def list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 240) -> None:
    """Start `args`, wait until `ready()` (or the process ends, or `timeout`), then SIGKILL its whole process
    group, as a crash or a pre-empted job would: the tests of exact resume start from here."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it finished first; the caller's assertions say so
        pass
    proc.wait()


def killed_and_resumed(tmp_path: Path, overrides: list[str], steps: int, every: int = 4) -> dict[str, Path]:
    """Run folders of an uninterrupted train.py run of `steps` (checkpoints every `every`), and of one killed
    after a mid-run checkpoint, then resumed with ckpt_path=last; asserts each run finished as it should."""
    full = run_entry("train.py", *overrides, log_dir=tmp_path / "full", run_dir=tmp_path / "full" / "train" / "run")
    assert full.returncode == 0, full.stderr[-3000:]
    log_dir = tmp_path / "killed"
    first = log_dir / "train" / "first"
    args = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", f"hydra.run.dir={first}", *overrides]
    mid_run = {f"step{step:06d}.ckpt" for step in range(2 * every, steps, every)}  # last.ckpt exists by then
    kill_when(args, lambda: bool(mid_run & {p.name for p in (first / "checkpoints").glob("*.ckpt")}))
    killed = [read_checkpoint(p)[0] for p in (first / "checkpoints").glob("*.ckpt")]
    assert killed and max(killed) < steps, "the run was not interrupted"
    resumed = run_entry("train.py", *overrides, "ckpt_path=last", log_dir=log_dir,
                        run_dir=log_dir / "train" / "second")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"full": tmp_path / "full" / "train" / "run", "killed": first, "resumed": log_dir / "train" / "second"}


def assert_same_last_checkpoints(a: Path, b: Path, steps: int) -> dict:
    """The last.ckpt of two run folders hold the same step and bit-identical weights; returns the first's."""
    import torch

    step_a, weights_a = read_checkpoint(a / "checkpoints" / "last.ckpt")
    step_b, weights_b = read_checkpoint(b / "checkpoints" / "last.ckpt")
    assert step_a == step_b == steps and weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    return weights_a


def read_checkpoint(path: Path):
    """(global_step, state_dict) of a Lightning checkpoint, on the CPU: one file, or the folder of a sharded one
    (FSDP `state_dict_type=sharded`), gathered in this process through torch's DCP."""
    import tempfile

    import torch

    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "gathered.pt")
            weights = torch.load(Path(tmp) / "gathered.pt", map_location="cpu", weights_only=False)["model"]
        return torch.load(path / "meta.pt", map_location="cpu", weights_only=False)["global_step"], weights
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["global_step"], state["state_dict"]


def with_fake_npu(script: str) -> dict:
    """Run `script` where "npu" is PyTorch's renamed PrivateUse1 backend with the Python stand-in for torch_npu
    (tests/npu_stand_in/fake_torch_npu.py); its last stdout line is JSON."""
    import json

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "npu_stand_in"), str(ROOT)]),
               ANISORA_NPU_TEST_BACKEND="fake_torch_npu")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
