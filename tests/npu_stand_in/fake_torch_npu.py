"""A stand-in for torch_npu's Python surface on a CPU machine, for the device-selection tests.

It renames PyTorch's PrivateUse1 backend to "npu" (what torch_npu itself does), so `torch.device("npu", i)`
parses and Lightning sees a real non-CUDA device type, and registers `torch.npu` with the few calls the
accelerator makes. It allocates nothing: tensor kernels on this device need a compiled backend.
"""

from __future__ import annotations

import contextlib
import types

import torch

DEVICES = 2
calls: list[tuple] = []

if torch._C._get_privateuse1_backend_name() != "npu":
    torch.utils.rename_privateuse1_backend("npu")


class Stream:
    def __init__(self, *args, **kwargs) -> None:
        calls.append(("Stream",))


module = types.ModuleType("torch.npu")
module.is_available = lambda: True
module.device_count = lambda: DEVICES
module.set_device = lambda device: calls.append(("set_device", str(device)))
module.empty_cache = lambda: calls.append(("empty_cache",))
module.memory_stats = lambda device=None: {"allocated_bytes.all.current": 0}
module.Stream = Stream
module.stream = lambda stream: contextlib.nullcontext()
module.current_device = lambda: 0
module.is_initialized = lambda: True
module._is_in_bad_fork = lambda: False
module.manual_seed_all = lambda seed: None
if not hasattr(torch, "npu"):
    torch._register_device_module("npu", module)
