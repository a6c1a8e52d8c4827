"""A stand-in for torch_npu's "hccl" process-group backend: the collectives of the "npu" test device, over gloo.

torch_npu registers HCCL with torch.distributed when it is imported; `openreg_npu` registers this instead, so
`init_process_group("hccl")` (what NPUDDPStrategy asks for) works on the CPU test device. Each collective
copies its device tensors to the host, runs gloo's collective there, waits, and copies the result back into
the same device tensors, so DDP's gradient buckets, its start-up broadcast and Lightning's barriers and
reductions really cross processes. Collectives are synchronous: the returned work is already complete.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, ProcessGroupGloo, Store, Work, _create_work_from_future

NAME = "hccl"


def _completed(result: Any) -> Work:
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(result)
    return _create_work_from_future(future)


def _copy_back(targets: list[torch.Tensor], host: list[torch.Tensor]) -> None:
    for target, value in zip(targets, host):
        if target.data_ptr() != value.data_ptr():  # host tensors that were CPU already hold the result
            target.copy_(value)


class HostGlooProcessGroup(dist.ProcessGroup):
    """The process group `init_process_group("hccl")` returns here: gloo underneath, device tensors on top."""

    def __init__(self, store: Store, rank: int, size: int, timeout: timedelta) -> None:
        super().__init__(rank, size)
        self.gloo = ProcessGroupGloo(PrefixStore("host_gloo", store), rank, size, timeout)

    def getBackendName(self) -> str:  # noqa: N802 - the name torch.distributed calls
        return NAME

    def name(self) -> str:
        return NAME

    def _get_backend(self, device: torch.device) -> ProcessGroupGloo:
        """The host backend for any device (init_process_group asks for the bound device's)."""
        return self.gloo

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> Work:
        host = [t.cpu() for t in tensors]
        self.gloo.allreduce(host, opts or dist.AllreduceOptions()).wait()
        _copy_back(tensors, host)
        return _completed(tensors)

    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> Work:
        host = [t.cpu() for t in tensors]
        self.gloo.broadcast(host, opts or dist.BroadcastOptions()).wait()
        _copy_back(tensors, host)
        return _completed(tensors)

    def allgather(self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None) -> Work:
        host_out = [[t.cpu() for t in group] for group in outputs]
        self.gloo.allgather(host_out, [t.cpu() for t in inputs]).wait()
        for group, host in zip(outputs, host_out):
            _copy_back(group, host)
        return _completed(outputs)

    def _allgather_base(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:  # noqa: A002
        host = output.cpu()
        self.gloo._allgather_base(host, input.cpu()).wait()
        _copy_back([output], [host])
        return _completed(output)

    def barrier(self, opts: Any = None) -> Work:
        self.gloo.barrier().wait()
        return _completed(None)


def register() -> None:
    """Make "hccl" a torch.distributed backend for the npu and the host (idempotent)."""
    if NAME.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(NAME, HostGlooProcessGroup, devices=["npu", "cpu"])
