"""Device selection for inference and evaluation; the only place besides npu/ that names backends."""

from __future__ import annotations

import torch

from anisora.config.errors import ConfigError

PRECISION_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16,
                    "16-mixed": torch.float16}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: str) -> torch.device:
    """accelerator.name -> a torch device (auto picks a GPU when one is present)."""
    if name == "cpu" or (name == "auto" and not cuda_available()):
        return torch.device("cpu")
    if name in ("gpu", "auto"):
        if not cuda_available():
            raise ConfigError("accelerator.name", "gpu was requested but torch sees no CUDA device")
        return torch.device("cuda", 0)
    if name == "npu":
        raise ConfigError("accelerator.name", "npu needs torch_npu and Ascend CANN: pip install 'anisora[npu]'")
    raise ConfigError("accelerator.name", f"expected one of auto, cpu, gpu, npu; got {name!r}")


def inference_dtype(device: torch.device, precision: str) -> torch.dtype:
    """fp32 on CPU (bf16 is slow without AVX512-BF16); the configured precision elsewhere."""
    return torch.float32 if device.type == "cpu" else PRECISION_DTYPES.get(precision, torch.float32)


def lightning_accelerator(name: str) -> str:
    return {"gpu": "cuda"}.get(name, name)


def set_num_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)


def empty_cache() -> None:
    """Return freed blocks of the accelerator's caching allocator (after offloading encoders)."""
    if cuda_available():
        torch.cuda.empty_cache()


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated accelerator memory since the last reset, in GiB (0 on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return 0.0


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
