"""Context parallelism: one video's token sequence split across the processes of a torchrun launch, through
diffusers' `ContextParallelConfig` (Ulysses all-to-all over heads, or ring attention). Every process runs
the same request; the DiT's attention exchanges sequence shards, and each rank ends with the whole output."""

from __future__ import annotations

import contextlib

import torch

from anisora.config.errors import ConfigError
from anisora.config.schema import CONTEXT_PARALLEL_KINDS

KINDS = CONTEXT_PARALLEL_KINDS  # ring needs an attention backend that returns log-sum-exp (flash, cuDNN SDPA)


@contextlib.contextmanager
def _at_least_one_device_index():
    """diffusers picks `rank % torch.accelerator.device_count()` as the device index, which divides by zero
    on a host without accelerators (the gloo/CPU case); there the index is irrelevant, so count one."""
    count = torch.accelerator.device_count
    if count() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def enable(denoiser: torch.nn.Module, degree: int, kind: str = "ulysses", mesh=None) -> None:
    """Shard the denoiser's attention over `degree` processes of the initialised default process group (or of
    `mesh`, a ("ring", "ulysses") device mesh, when the world holds several groups)."""
    from diffusers import ContextParallelConfig

    if kind not in KINDS:
        raise ConfigError("speedup.context_parallel_kind", f"expected one of {', '.join(KINDS)}; got {kind!r}")
    if getattr(denoiser, "_cp_plan", None) is None:
        raise ConfigError("speedup.context_parallel", f"{type(denoiser).__name__} has no context-parallel plan in "
                          "diffusers (Wan models have one)")
    heads = int(getattr(denoiser.config, "num_attention_heads", degree))
    if kind == "ulysses" and heads % degree:
        raise ConfigError("speedup.context_parallel", f"Ulysses splits the {heads} attention heads: {degree} must "
                          "divide them (or use speedup.context_parallel_kind=ring)")
    degrees = {"ulysses_degree": degree} if kind == "ulysses" else {"ring_degree": degree}
    config = ContextParallelConfig(**degrees, mesh=mesh)
    with _at_least_one_device_index():
        denoiser.enable_parallelism(config=config)
