"""A GPU benchmark without a GPU stops in one line naming the flag that allows a CPU run (benchmarks/gpu.py)."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of scripts, not an installed package

from benchmarks.gpu import benchmark_device, device_name  # noqa: E402


def test_without_a_gpu_a_benchmark_stops_in_one_line_unless_a_cpu_run_was_asked_for(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        benchmark_device("benchmarks/reward_models.py", False, "--cpu, or --smoke")
    assert str(info.value) == "benchmarks/reward_models.py needs a CUDA GPU (or --cpu, or --smoke)"
    assert benchmark_device("benchmarks/train_throughput.py", True) == torch.device("cpu")
    assert device_name(torch.device("cpu")) == "cpu"
