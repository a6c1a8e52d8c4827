"""`NPUAccelerator`: Lightning's accelerator contract (all seven abstract methods of 2.6) for Ascend."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry

from anisora.accelerators.npu.availability import require_torch_npu, torch_npu_problem


class NPUAccelerator(Accelerator):
    """Ascend NPUs through torch_npu; device indices as Lightning's CUDA accelerator takes them."""

    def setup_device(self, device: torch.device) -> None:
        if device.type != "npu":
            raise ValueError(f"NPUAccelerator got a {device.type} device: {device}")
        require_torch_npu().set_device(device)

    def teardown(self) -> None:
        if torch_npu_problem() is None:
            torch.npu.empty_cache()

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        """1, "2", [0, 3] or -1 / "auto" (every device) -> device indices."""
        if isinstance(devices, str):
            devices = -1 if devices.strip() in ("-1", "auto") else [int(d) for d in devices.split(",") if d.strip()] \
                if "," in devices else int(devices)
        if isinstance(devices, int):
            count = NPUAccelerator.auto_device_count() if devices == -1 else devices
            return list(range(count))
        return [int(d) for d in devices]

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("npu", i) for i in NPUAccelerator.parse_devices(devices)]

    @staticmethod
    def auto_device_count() -> int:
        return require_torch_npu().device_count()

    @staticmethod
    def is_available() -> bool:
        return torch_npu_problem() is None

    @staticmethod
    def name() -> str:
        return "npu"

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, Any]:
        """Allocator statistics for Lightning's DeviceStatsMonitor."""
        return dict(require_torch_npu().memory_stats(device))

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        accelerator_registry.register(cls.name(), cls, description=cls.__name__)


def register_npu() -> None:
    """Make `Trainer(accelerator="npu")` resolve to NPUAccelerator (idempotent, imports no torch_npu)."""
    if "npu" not in AcceleratorRegistry:
        NPUAccelerator.register_accelerators(AcceleratorRegistry)
