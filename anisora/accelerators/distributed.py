"""Process groups for work launched with torchrun: which backend a device speaks, and this process's place."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from anisora.config.errors import ConfigError

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


@dataclass(frozen=True)
class ProcessPlace:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_place() -> ProcessPlace:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return ProcessPlace(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def require_world(size: int, key: str) -> ProcessPlace:
    """This process's place in a torchrun launch of exactly `size` processes, or a one-line error."""
    place = launched_place()
    if place.world_size != size:
        raise ConfigError(key, f"{size} needs {size} processes: launch with torchrun --nproc_per_node {size} "
                          f"(this launch has {place.world_size})")
    return place


def init_process_group(device: torch.device) -> None:
    """Join the launch's process group with the device's collective backend (idempotent)."""
    if dist.is_initialized():
        return
    backend = BACKENDS.get(device.type)
    if backend is None:
        raise ConfigError("accelerator.name", f"no collective backend for {device.type} devices")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)


def close_process_group() -> None:
    """Leave the group together: a rank that tears down while its peer is still inside a collective aborts
    the peer (gloo: "terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sequence_parallel_mesh(degree: int, device: torch.device):
    """The (ring 1, ulysses `degree`) sub-mesh of this rank's group when there are several groups; None when
    the whole world is one group (diffusers builds that mesh itself)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if world == degree:
        return None
    mesh = init_device_mesh(device.type, (world // degree, 1, degree), mesh_dim_names=("dp", "ring", "ulysses"))
    return mesh["ring", "ulysses"]
