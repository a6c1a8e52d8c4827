"""Low-VRAM mode: diffusers group offloading keeps the DiT in CPU memory and streams block groups to the GPU
(prefetching the next group on a side stream), so a 14B model runs within a consumer card's memory."""

from __future__ import annotations

import torch

from anisora.accelerators.devices import has_streams


def unavailable(device: torch.device) -> str | None:
    if not has_streams(device):
        return f"needs a GPU to offload to (group offloading with streams); this run is on {device}"
    return None


def enable(backbone, device: torch.device, blocks_per_group: int = 1) -> None:
    """The DiT goes to CPU memory with block-level offloading; the VAE and encoders stay as they are."""
    backbone.denoiser.to("cpu")
    backbone.execution_device = device  # where sampling runs, now that the DiT's weights live on the CPU
    backbone.denoiser.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                           offload_type="block_level", num_blocks_per_group=blocks_per_group,
                                           use_stream=True, record_stream=True, low_cpu_mem_usage=True)
