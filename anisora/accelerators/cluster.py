"""Which cluster launch started this process (Lightning's own cluster environments), and whether
`accelerator.num_nodes` and `accelerator.devices` agree with it.

Lightning picks the environment itself (torchrun / torch elastic first, then SLURM, LSF, MPI) and reads ranks
from it; the checks here ask the same classes, before any model is built, so a launch that cannot work fails
in one line instead of hanging at the rendezvous.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from anisora.config.errors import ConfigError

#: the order Lightning's accelerator connector tries them in (torch elastic can run inside a SLURM job)
CLUSTER_ENVIRONMENTS: tuple[type[ClusterEnvironment], ...] = (TorchElasticEnvironment, SLURMEnvironment,
                                                              LSFEnvironment, MPIEnvironment)
LAUNCH_NAMES = {TorchElasticEnvironment: "torchrun", SLURMEnvironment: "srun", LSFEnvironment: "jsrun",
                MPIEnvironment: "mpirun"}


def cluster_environment() -> ClusterEnvironment | None:
    """The environment of the launcher that started this process; None for a plain `python train.py`."""
    for env_type in CLUSTER_ENVIRONMENTS:
        if env_type.detect():
            return env_type()
    return None


def launch_name(env: ClusterEnvironment | None) -> str:
    return LAUNCH_NAMES.get(type(env), "python") if env is not None else "python"


def launch_hint(num_nodes: int, devices: Any) -> str:
    """The two launches a run over `num_nodes` machines can use (README: Many nodes)."""
    per_node = devices if isinstance(devices, int) else "<devices per node>"
    return (f"torchrun --nnodes {num_nodes} --nproc-per-node {per_node} --rdzv-backend c10d --rdzv-endpoint "
            f"HOST:PORT train.py ... on every node, or srun under SLURM (sbatch --nodes {num_nodes} "
            f"--ntasks-per-node {per_node})")


def check_launch(num_nodes: int, devices: Any, device_count: int | None) -> ClusterEnvironment | None:
    """Fail in one line when the launch cannot hold `num_nodes` x `devices` processes: several nodes without a
    cluster launcher (Lightning would wait forever for the other nodes), or a launch whose world size, nodes or
    tasks per node differ from the config. Returns the detected environment."""
    env = cluster_environment()
    if env is None:
        if num_nodes > 1:
            raise ConfigError("accelerator.num_nodes", f"{num_nodes} needs a multi-node launch: "
                              f"{launch_hint(num_nodes, devices)}; this process was started by neither")
        return None
    if num_nodes > 1 and device_count is None:
        raise ConfigError("accelerator.devices", f"{devices!r}: name the processes per node (an integer or a list) "
                          f"when accelerator.num_nodes={num_nodes}")
    if device_count is not None:
        try:
            env.validate_settings(device_count, num_nodes)
        except ValueError as ex:
            raise ConfigError("accelerator.num_nodes", f"this {launch_name(env)} launch does not match "
                              f"accelerator.devices={devices!r} x accelerator.num_nodes={num_nodes}: "
                              f"{str(ex).splitlines()[0]}") from None
    return env
