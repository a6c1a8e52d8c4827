"""accelerator=npu: one-line failure without Ascend; with an NPU present, Lightning gets NPU objects only.

The second part runs in a subprocess with PyTorch's PrivateUse1 backend renamed to "npu" and a stand-in
for torch_npu's Python calls (tests/npu_stand_in), so Lightning's own accelerator connector sees a real
non-CUDA device type: nothing in Lightning is mocked.
"""

from __future__ import annotations

import textwrap

import pytest
from conftest import list_files, run_entry, with_fake_npu

from anisora.accelerators.npu import NPUAccelerator, torch_npu_problem


def test_without_torch_npu_train_fails_at_once_with_one_line_and_writes_nothing(tmp_path):
    if torch_npu_problem() is None:
        pytest.skip("this machine has a working NPU stack")
    log_dir = tmp_path / "outputs"
    out = run_entry("train.py", "model=wan14b", "model.init=random", "accelerator=npu", log_dir=log_dir, timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: accelerator.name: accelerator=npu needs torch_npu")
    assert "pip install 'anisora[npu]'" in lines[0] and "No module named 'torch_npu'" in lines[0]
    assert list_files(log_dir) == [] and not log_dir.exists()


def test_accelerator_contract():
    assert not NPUAccelerator.__abstractmethods__
    assert NPUAccelerator.name() == "npu"
    assert NPUAccelerator.parse_devices([0, 3]) == [0, 3] and NPUAccelerator.parse_devices("1,2") == [1, 2]
    assert NPUAccelerator.parse_devices(2) == [0, 1]


SCRIPT = textwrap.dedent("""
    import json, torch
    import fake_torch_npu
    import lightning.pytorch as pl
    from anisora.accelerators.npu import (NPUAccelerator, NPUDDPStrategy, NPUFSDPPrecision, NPUFSDPStrategy,
                                          SingleNPUStrategy, trainer_kwargs)
    from anisora.accelerators.devices import resolve_device, trainer_device_kwargs

    out = {"device": str(resolve_device("npu"))}
    for strategy, devices in (("auto", 1), ("auto", 2), ("fsdp", 2), ("ddp", [0, 1])):
        kwargs = trainer_device_kwargs("npu", devices, strategy, "bf16-mixed")
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, **kwargs)
        s = trainer.strategy
        plugin = trainer.precision_plugin
        out[f"{strategy}-{devices}"] = {
            "accelerator": type(trainer.accelerator).__name__, "strategy": type(s).__name__,
            "root": str(s.root_device), "devices": [str(d) for d in getattr(s, "parallel_devices", None) or []],
            "backend": getattr(s, "process_group_backend", None), "precision": type(plugin).__name__,
            "autocast": getattr(plugin, "device", None),
        }
    out["registered"] = "npu" in pl.accelerators.AcceleratorRegistry
    print(json.dumps(out))
""")


def test_with_an_npu_lightning_gets_npu_accelerator_strategies_and_autocast():
    out = with_fake_npu(SCRIPT)
    assert out["device"] == "npu:0" and out["registered"]
    single = out["auto-1"]
    assert single == {"accelerator": "NPUAccelerator", "strategy": "SingleNPUStrategy", "root": "npu:0",
                      "devices": [], "backend": None, "precision": "MixedPrecision", "autocast": "npu"}
    for key in ("auto-2", "ddp-[0, 1]"):
        assert out[key]["strategy"] == "NPUDDPStrategy" and out[key]["backend"] == "hccl"
        assert out[key]["devices"] == ["npu:0", "npu:1"] and out[key]["autocast"] == "npu"
    fsdp = out["fsdp-2"]
    assert fsdp["strategy"] == "NPUFSDPStrategy" and fsdp["precision"] == "NPUFSDPPrecision"
    assert fsdp["backend"] == "hccl" and fsdp["devices"] == ["npu:0", "npu:1"]
