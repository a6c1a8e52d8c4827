"""Process groups for work launched with torchrun: which backend a device speaks, and this process's place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from anisora.config.errors import ConfigError

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


@dataclass(frozen=True)
class ProcessPlace:
    rank: int
    world_size: int
    local_rank: int
    node_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_place() -> ProcessPlace:
    """This process's global rank, world size, local rank and node as the cluster launcher says (torchrun, SLURM:
    Lightning's cluster environments), else RANK / WORLD_SIZE / LOCAL_RANK set by hand, else a single process."""
    from anisora.accelerators.cluster import cluster_environment

    env = cluster_environment()
    if env is not None:
        return ProcessPlace(env.global_rank(), env.world_size(), env.local_rank(), env.node_rank())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return ProcessPlace(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def require_world(size: int, key: str) -> ProcessPlace:
    """This process's place in a torchrun launch of exactly `size` processes, or a one-line error."""
    place = launched_place()
    if place.world_size != size:
        raise ConfigError(key, f"{size} needs {size} processes: launch with torchrun --nproc_per_node {size} "
                          f"(this launch has {place.world_size})")
    return place


def export_rendezvous() -> None:
    """MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE for `init_process_group` from the cluster launcher (srun sets
    only its own SLURM_* variables; Lightning's environment derives the address and port from them)."""
    from anisora.accelerators.cluster import cluster_environment

    env = cluster_environment()
    if env is None:
        return
    os.environ.setdefault("MASTER_ADDR", env.main_address)
    os.environ.setdefault("MASTER_PORT", str(env.main_port))
    os.environ.setdefault("RANK", str(env.global_rank()))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size()))


def init_process_group(device: torch.device) -> None:
    """Join the launch's process group with the device's collective backend (idempotent)."""
    if dist.is_initialized():
        return
    backend = BACKENDS.get(device.type)
    if backend is None:
        raise ConfigError("accelerator.name", f"no collective backend for {device.type} devices")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    export_rendezvous()
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)


def close_process_group() -> None:
    """Leave the group together: a rank that tears down while its peer is still inside a collective aborts
    the peer (gloo: "terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sequence_parallel_groups(mesh, degree: int, world: int) -> list[list[int]]:
    """The global ranks of each sequence-parallel group: the rows of the (dp, ring, ulysses) mesh, or the whole
    world when it is one group."""
    if mesh is None:
        return [list(range(world))]
    return [[int(r) for r in row] for row in mesh.mesh.reshape(-1, degree).tolist()]


def check_groups_within_nodes(groups: list[list[int]], node_of_rank: list[int]) -> None:
    """Each sequence-parallel group exchanges activations at every attention layer: it must stay inside one node
    (NVLink / HCCS), never cross the inter-node network. Ranks laid out node by node (torchrun; srun's default
    block distribution) keep groups of `degree` consecutive ranks inside a node when `degree` divides the devices
    per node; a cyclic layout does not."""
    for group in groups:
        nodes = sorted({node_of_rank[r] for r in group})
        if len(nodes) > 1:
            raise ConfigError("trainer.sequence_parallel", f"the group of ranks {group} spans nodes {nodes}: launch "
                              "ranks node by node (torchrun, or srun --distribution=block) with a multiple of "
                              f"{len(group)} devices per node")


def sequence_parallel_mesh(degree: int, device: torch.device, node_rank: int = 0):
    """The (ring 1, ulysses `degree`) sub-mesh of this rank's group when there are several groups; None when
    the whole world is one group (diffusers builds that mesh itself). Every group is checked to lie inside
    one node (the node ranks of all processes are gathered once)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    mesh = None
    if world != degree:
        mesh = init_device_mesh(device.type, (world // degree, 1, degree), mesh_dim_names=("dp", "ring", "ulysses"))
    node_of_rank: list[int] = [0] * world
    dist.all_gather_object(node_of_rank, node_rank)
    check_groups_within_nodes(sequence_parallel_groups(mesh, degree, world), node_of_rank)
    return None if mesh is None else mesh["ring", "ulysses"]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` in rank order (torch.distributed's all_gather_object); `[value]` when no process group
    is initialised or it holds one rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
