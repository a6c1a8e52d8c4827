"""Device selection for training, inference and evaluation; the only place besides npu/ that names backends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
        from anisora.accelerators.npu import require_torch_npu

        require_torch_npu()
        return torch.device("npu", 0)
    raise ConfigError("accelerator.name", f"expected one of auto, cpu, gpu, npu; got {name!r}")


def local_device(name: str, local_rank: int) -> torch.device:
    """The device of one process among several on a host (GPU local_rank modulo the GPUs present)."""
    device = resolve_device(name)
    if device.type == "cuda":
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


def inference_dtype(device: torch.device, precision: str) -> torch.dtype:
    """fp32 on CPU (bf16 is slow without AVX512-BF16); the configured precision elsewhere."""
    return torch.float32 if device.type == "cpu" else PRECISION_DTYPES.get(precision, torch.float32)


def activation_dtype(precision: str) -> torch.dtype:
    """The dtype attention sees under a Lightning precision setting (on any device, unlike `inference_dtype`)."""
    return PRECISION_DTYPES.get(precision, torch.float32)


def lightning_accelerator(name: str) -> str:
    return {"gpu": "cuda"}.get(name, name)


def trainer_device_kwargs(name: str, devices: Any, strategy: str | Mapping[str, Any], precision: str,
                          block_types: set[type[torch.nn.Module]] | None = None, num_nodes: int = 1
                          ) -> dict[str, Any]:
    """`lightning.Trainer` keyword arguments for the accelerator and strategy groups. NPUs get explicit
    accelerator, strategy and precision objects (Lightning would fall back to CPU strategies and CUDA autocast).
    `block_types` are the denoiser's block classes (FSDP wraps each block); without them this call only checks:
    a missing NPU stack or DeepSpeed, a strategy the devices cannot run, or `num_nodes` without a matching
    cluster launch (torchrun, SLURM) fails here with one line."""
    from anisora.accelerators.cluster import check_launch
    from anisora.accelerators.strategies import (
        StrategySpec,
        build_strategy,
        check_strategy,
        device_count,
        strategy_options,
    )

    spec = StrategySpec.of(strategy)
    check_launch(num_nodes, devices, device_count(devices))  # first: the launch names what a node count needs
    check_strategy(spec, name, devices, precision, num_nodes)
    if name == "npu":
        from anisora.accelerators.npu import trainer_kwargs

        kwargs = trainer_kwargs(spec.name, devices, precision, strategy_options(spec, name, block_types))
        return {**kwargs, "num_nodes": num_nodes}
    return {"accelerator": lightning_accelerator(name), "devices": devices, "num_nodes": num_nodes,
            "strategy": build_strategy(spec, name, block_types), "precision": precision, "plugins": []}


AUTO_ATTENTION = "auto"


#: FlashAttention-4 from the local `flash-attn-4` package (CuTe DSL): diffusers knows it only as a kernel downloaded
#: from the Hub (`flash_4_hub`); this name runs that backend with the installed package's kernel, offline
LOCAL_FLASH_4 = "flash_4"
#: Hopper and newer, fastest exact kernel first among those installed: FlashAttention-3 (no PyPI wheel, not timed
#: here), FlashAttention-4 (1.18-1.25x cuDNN forward + backward at Wan's shapes on an H100: benchmarks/README.md,
#: attention kernels), then cuDNN's fused attention, which needs no package
HOPPER_ORDER = ("_flash_3", LOCAL_FLASH_4, "_native_cudnn")


def installed_attention_kernels() -> set[str]:
    """The optional exact kernels whose packages import here (`_flash_3`, `flash_4`). FlashAttention-4 is imported,
    not only found: its CUDA DSL can be installed yet fail to load, and `auto` must then fall back, not stop."""
    import importlib.util

    found = set()
    if importlib.util.find_spec("flash_attn_interface"):
        found.add("_flash_3")
    try:
        local_flash_4()
        found.add(LOCAL_FLASH_4)
    except ConfigError:  # not installed, or a broken or namespace-only flash_attn package
        pass
    return found


def pick_attention_backend(device: torch.device, dtype: torch.dtype) -> str | None:
    """The fastest exact attention kernel of a device for 16-bit activations: on Hopper and newer the first of
    `HOPPER_ORDER` that is installed (cuDNN needs no package); PyTorch's flash kernel on Ampere/Ada; the fused NPU
    kernel on Ascend; None (PyTorch's own SDPA choice) elsewhere and for fp32, which the fused kernels do not take.
    Approximate kernels (sage) are never picked: name them yourself."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    if device.type == "npu":
        return "_native_npu"
    capability = compute_capability(device)
    if capability is None:
        return None
    if capability >= (9, 0):
        installed = installed_attention_kernels() | {"_native_cudnn"}
        return next(name for name in HOPPER_ORDER if name in installed)
    return "_native_flash" if capability >= (8, 0) else None


def check_attention_backend(name: str | None) -> None:
    """Fail before any model is built on a name diffusers does not know."""
    if not name or name == AUTO_ATTENTION:
        return
    if name == LOCAL_FLASH_4:
        local_flash_4()
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    allowed = [b.value for b in AttentionBackendName]
    if name not in allowed:
        raise ConfigError("accelerator.attention_backend",
                          f"expected one of {', '.join([LOCAL_FLASH_4, *allowed])}; got {name!r}")


def local_flash_4():
    """The installed FlashAttention-4 kernel (`flash_attn.cute.flash_attn_func`), or a one-line error naming the key."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as ex:  # not installed, or its CUDA DSL fails to import on this stack
        raise ConfigError("accelerator.attention_backend", f"{LOCAL_FLASH_4} needs the flash-attn-4 package "
                          f"(pip install flash-attn-4); importing flash_attn.cute failed: "
                          f"{type(ex).__name__}: {ex}".splitlines()[0]) from None
    return flash_attn_func


def use_local_flash_4(denoiser: torch.nn.Module) -> None:
    """Point every attention processor of `denoiser` at diffusers' `flash_4_hub` backend with the installed
    package's kernel in place of the Hub download (whose checks need the `kernels` package and a network)."""
    from diffusers.models.attention_dispatch import (
        _HUB_KERNELS_REGISTRY,
        AttentionBackendName,
        _AttentionBackendRegistry,
    )

    backend = AttentionBackendName.FLASH_4_HUB
    _HUB_KERNELS_REGISTRY[backend].kernel_fn = local_flash_4()
    processors = [m.processor for m in denoiser.modules() if hasattr(getattr(m, "processor", None),
                                                                     "_attention_backend")]
    if not processors:
        raise ConfigError("accelerator.attention_backend", f"{type(denoiser).__name__} has no diffusers attention")
    for processor in processors:
        processor._attention_backend = backend
    _AttentionBackendRegistry.set_active_backend(backend)


def set_attention_backend(denoiser: torch.nn.Module, name: str | None, device: torch.device | None = None,
                          dtype: torch.dtype = torch.float32) -> str | None:
    """The accelerator group's diffusers attention backend (e.g. `_native_npu` on Ascend); None keeps the default,
    `auto` picks per device and activation dtype (`pick_attention_backend`). Returns the backend set."""
    if name == AUTO_ATTENTION:
        name = pick_attention_backend(device or torch.device("cpu"), dtype)
    if not name:
        return None
    check_attention_backend(name)
    if not hasattr(denoiser, "set_attention_backend"):
        raise ConfigError("accelerator.attention_backend", f"{type(denoiser).__name__} is not a diffusers model")
    if name == LOCAL_FLASH_4:
        use_local_flash_4(denoiser)
    else:
        denoiser.set_attention_backend(name)
    return name


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


def cap_memory(device: torch.device, gib: float) -> None:
    """Let this process allocate at most `gib` GiB of a CUDA device (0: all of it), after returning cached blocks:
    a large GPU answers whether a run fits a smaller one. A no-op elsewhere."""
    if device.type != "cuda":
        return
    empty_cache()
    total = total_memory_bytes(device) / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib / total) if gib else 1.0, device)


def total_memory_bytes(device: torch.device) -> int | None:
    """A CUDA device's memory in bytes; None elsewhere (no device budget to check against)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def host_memory_bytes() -> int:
    """The RAM this process may use: the machine's, or its cgroup's limit when that is lower (a container's
    limit is what kills an oversized process, with exit 137 and no message)."""
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def device_memory_bytes(device: torch.device) -> int | None:
    """Memory a model's weights must fit in on `device`: a GPU's or an NPU's own, the host's RAM on the CPU;
    None when the device does not say."""
    if device.type == "cpu":
        return host_memory_bytes()
    if device.type == "npu":
        props = getattr(getattr(torch, "npu", None), "get_device_properties", None)
        return int(props(device).total_memory) if props is not None else None
    return total_memory_bytes(device)


def compute_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None elsewhere."""
    if device.type != "cuda" or not cuda_available():
        return None
    return torch.cuda.get_device_capability(device)


def has_streams(device: torch.device) -> bool:
    """Whether the device has asynchronous copy streams (what group offloading overlaps transfers with)."""
    return device.type == "cuda" and cuda_available()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
