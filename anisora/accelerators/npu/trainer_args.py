"""`accelerator=npu` -> explicit Lightning objects: accelerator, strategy and precision plugin together."""

from __future__ import annotations

from typing import Any

from anisora.accelerators.npu.accelerator import NPUAccelerator, register_npu
from anisora.accelerators.npu.availability import require_torch_npu
from anisora.accelerators.npu.precision import npu_precision_plugin
from anisora.accelerators.npu.strategies import NPUDDPStrategy, NPUFSDPStrategy, SingleNPUStrategy
from anisora.config.errors import ConfigError

STRATEGIES = {"ddp": NPUDDPStrategy, "fsdp": NPUFSDPStrategy}


def trainer_kwargs(strategy: str, devices: Any, precision: str) -> dict[str, Any]:
    """Keyword arguments of `lightning.Trainer` for NPUs; fails with one line before anything is built
    when torch_npu or a device is missing."""
    require_torch_npu()
    register_npu()
    indices = NPUAccelerator.parse_devices(devices)
    if not indices:
        raise ConfigError("accelerator.devices", f"no NPU selected by {devices!r}")
    if strategy == "auto":
        strategy = "ddp" if len(indices) > 1 else "single"
    if strategy == "single":
        if len(indices) != 1:
            raise ConfigError("accelerator.strategy", f"single runs on one NPU, got devices={devices!r}")
        chosen = SingleNPUStrategy(indices[0])
    elif strategy in STRATEGIES:
        chosen = STRATEGIES[strategy](parallel_devices=NPUAccelerator.get_parallel_devices(indices))
    else:
        raise ConfigError("accelerator.strategy", f"on npu expected one of auto, single, {', '.join(STRATEGIES)}; "
                          f"got {strategy!r}")
    fsdp = isinstance(chosen, NPUFSDPStrategy)
    return {"accelerator": NPUAccelerator(), "devices": len(indices), "strategy": chosen,
            "plugins": [npu_precision_plugin(precision, fsdp=fsdp)]}
