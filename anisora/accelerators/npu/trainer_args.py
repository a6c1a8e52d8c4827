"""`accelerator=npu` -> explicit Lightning objects: accelerator, strategy and precision plugin together."""

from __future__ import annotations

from typing import Any

from anisora.accelerators.npu.accelerator import NPUAccelerator, register_npu
from anisora.accelerators.npu.availability import require_torch_npu
from anisora.accelerators.npu.precision import npu_precision_plugin
from anisora.accelerators.npu.strategies import NPUDDPStrategy, NPUFSDPStrategy, SingleNPUStrategy
from anisora.config.errors import ConfigError


def npu_strategies() -> dict[str, type]:
    from anisora.accelerators.strategies import AnyDeviceDeepSpeedStrategy

    return {"ddp": NPUDDPStrategy, "fsdp": NPUFSDPStrategy, "deepspeed": AnyDeviceDeepSpeedStrategy}


def trainer_kwargs(strategy: str, devices: Any, precision: str, options: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Keyword arguments of `lightning.Trainer` for NPUs; fails with one line before anything is built
    when torch_npu or a device is missing. `options` are the strategy class's keyword arguments
    (anisora.accelerators.strategies.strategy_options: HCCL, FSDP block wrapping, ZeRO stage...)."""
    require_torch_npu()
    register_npu()
    indices = NPUAccelerator.parse_devices(devices)
    if not indices:
        raise ConfigError("accelerator.devices", f"no NPU selected by {devices!r}")
    if strategy == "auto":
        strategy = "ddp" if len(indices) > 1 else "single"
    strategies = npu_strategies()
    if strategy == "single":
        if len(indices) != 1:
            raise ConfigError("strategy", f"single runs on one NPU, got accelerator.devices={devices!r}")
        chosen = SingleNPUStrategy(indices[0])
    elif strategy in strategies:
        kwargs = {k: v for k, v in (options or {}).items() if v is not None}  # HCCL unless the config names one
        chosen = strategies[strategy](parallel_devices=NPUAccelerator.get_parallel_devices(indices), **kwargs)
    else:
        raise ConfigError("strategy", f"on npu expected one of auto, single, {', '.join(strategies)}; "
                          f"got {strategy!r}")
    plugin = npu_precision_plugin(precision, fsdp=isinstance(chosen, NPUFSDPStrategy),
                                  deepspeed=strategy == "deepspeed")
    return {"accelerator": NPUAccelerator(), "devices": len(indices), "strategy": chosen, "plugins": [plugin]}
