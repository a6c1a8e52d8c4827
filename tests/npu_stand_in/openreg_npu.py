"""A real "npu" device on a CPU machine: PyTorch's PrivateUse1 backend with a small compiled extension.

Importing this module loads `openreg_npu.cpp` (built by `openreg_build`: an allocator over host memory,
a device guard for 2 devices, backend hooks, memory/view kernels, a CPU fallback for every other op and
autocast), renames PrivateUse1 to "npu", registers `torch.npu` with the calls torch, Lightning and
anisora make, and an "hccl" process-group backend over gloo (`openreg_hccl`), as torch_npu does. So
`ANISORA_NPU_TEST_BACKEND=openreg_npu` makes `anisora.accelerators.npu` run on a device where tensors
really live. The rename is process-wide: import this only in a process of its own.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from openreg_build import build
from openreg_hccl import register as register_hccl


def _ops() -> Any:
    return torch.ops.openreg_npu


def _index(device: torch.device | str | int | None) -> int:
    if device is None:
        return current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return current_device() if device.index is None else device.index


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    return True


def _is_in_bad_fork() -> bool:
    return False


def device_count() -> int:
    return int(_ops().device_count())


def current_device() -> int:
    return int(_ops().current_device())


def set_device(device: torch.device | str | int) -> None:
    _ops().set_device(_index(device))


class device:  # noqa: N801 - the name torch.cuda.device and torch_npu's torch.npu.device have
    """Context manager that makes `index` the current device, as torch.cuda.device does."""

    def __init__(self, index: torch.device | str | int | None) -> None:
        self.index = None if index is None else _index(index)
        self.previous = -1

    def __enter__(self) -> None:
        self.previous = current_device()
        if self.index is not None:
            set_device(self.index)

    def __exit__(self, *exc: object) -> None:
        set_device(self.previous)


def synchronize(device: torch.device | str | int | None = None) -> None:
    """Kernels run synchronously on the host: nothing to wait for."""


def empty_cache() -> None:
    """Memory goes back to the host allocator on free: nothing is cached."""


def memory_allocated(device: torch.device | str | int | None = None) -> int:
    return int(_ops().memory_counts(_index(device))[0])


def max_memory_allocated(device: torch.device | str | int | None = None) -> int:
    return int(_ops().memory_counts(_index(device))[1])


def memory_stats(device: torch.device | str | int | None = None) -> dict[str, int]:
    current, peak = _ops().memory_counts(_index(device))
    return {"allocated_bytes.all.current": int(current), "allocated_bytes.all.peak": int(peak)}


class Stream:
    """One in-order queue per device (kernels are synchronous), so streams only carry their device."""

    def __init__(self, device: torch.device | str | int | None = None, priority: int = 0) -> None:
        self.device = torch.device("npu", _index(device))

    def synchronize(self) -> None:
        pass

    def wait_stream(self, stream: Stream) -> None:
        pass


@contextlib.contextmanager
def stream(stream: Stream | None) -> Iterator[None]:
    yield


def current_stream(device: torch.device | str | int | None = None) -> Stream:
    return Stream(device)


def manual_seed(seed: int) -> None:
    """Random ops on this device draw from the CPU generator (through the fallback), which torch.manual_seed
    seeds already: the device has no generator of its own."""


def manual_seed_all(seed: int) -> None:
    manual_seed(seed)


def get_amp_supported_dtype() -> list[torch.dtype]:
    return [torch.bfloat16, torch.float16]


def is_bf16_supported() -> bool:
    return True


def _device_module() -> types.ModuleType:
    module = types.ModuleType("torch.npu")
    for name in ("is_available", "is_initialized", "_is_in_bad_fork", "device_count", "current_device",
                 "set_device", "device", "synchronize", "empty_cache", "memory_allocated", "max_memory_allocated",
                 "memory_stats", "Stream", "stream", "current_stream", "manual_seed", "manual_seed_all",
                 "get_amp_supported_dtype", "is_bf16_supported"):
        setattr(module, name, globals()[name])
    return module


def install() -> None:
    """Load the device into this process (idempotent). The rename of PrivateUse1 is process-wide."""
    if hasattr(torch, "npu"):
        return
    torch.ops.load_library(str(build()))  # registers the device's C++ parts with the dispatcher
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    torch._register_device_module("npu", _device_module())
    torch.utils.generate_methods_for_privateuse1_backend(for_packed_sequence=False)
    register_hccl()


install()
