"""The one device check every GPU benchmark starts with, and the device name its results file records: numbers
mean nothing on a CPU, so without a GPU a script stops at once with one line naming the flag that allows a CPU
run (a smoke test of the same code)."""

from __future__ import annotations

import sys

import torch


def benchmark_device(script: str, cpu_allowed: bool, flags: str = "--smoke") -> torch.device:
    """The first CUDA GPU; else the CPU when `cpu_allowed` (one of `flags` was given); else exit with one line."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if not cpu_allowed:
        sys.exit(f"{script} needs a CUDA GPU (or {flags})")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """What a results file records as its device: the GPU's model name, or "cpu" for a smoke run."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
