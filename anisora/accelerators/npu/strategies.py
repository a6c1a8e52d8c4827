"""NPU subclasses of Lightning's strategies: HCCL, no CUDA streams, FSDP accepted on a non-CUDA device."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

from anisora.accelerators.checkpoint_io import FolderCheckpoints


class SingleNPUStrategy(SingleDeviceStrategy):
    """One NPU. Lightning would pick SingleDeviceStrategy("cpu") for an unknown accelerator."""

    strategy_name = "single_npu"

    def __init__(self, device: int | str | torch.device = 0, **kwargs: Any) -> None:
        device = torch.device("npu", device) if isinstance(device, int) else torch.device(device)
        super().__init__(device=device, **kwargs)


class NPUDDPStrategy(DDPStrategy):
    """DDP over HCCL; the model is wrapped without the CUDA side stream DDPStrategy opens."""

    strategy_name = "ddp_npu"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("process_group_backend", "hccl")
        super().__init__(**kwargs)

    def _setup_model(self, model: Module) -> DistributedDataParallel:
        device_ids = self.determine_ddp_device_ids()
        stream = torch.npu.stream(torch.npu.Stream()) if device_ids is not None else nullcontext()
        with stream:
            return DistributedDataParallel(module=model, device_ids=device_ids, **self._ddp_kwargs)

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()


class NPUFSDPStrategy(FolderCheckpoints, FSDPStrategy):
    """FSDP over HCCL. Being a subclass is what gets past Lightning's `type(strategy) is FSDPStrategy` check
    that refuses FSDP on any accelerator but CUDA."""

    strategy_name = "fsdp_npu"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("process_group_backend", "hccl")
        super().__init__(**kwargs)
