"""The `strategy` group -> Lightning strategy objects, the same on the CPU, GPUs and NPUs.

Lightning admits FSDP and DeepSpeed on CUDA only: its accelerator connector refuses a strategy whose
`type()` is exactly `FSDPStrategy` on any other accelerator, and `DeepSpeedStrategy.setup_environment`
raises unless the accelerator is CUDA's. The small subclasses below lift those two checks and nothing
else, so one config trains on the CPU (tests: gloo), GPUs (NCCL) and NPUs (HCCL; the NPU package supplies
its own DDP/FSDP subclasses and takes the options built here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, Strategy
from torch import nn

from anisora.accelerators.checkpoint_io import FolderCheckpoints
from anisora.config.errors import ConfigError

#: process-group backend per accelerator; `auto` leaves the choice to Lightning (gloo on CPU, nccl on CUDA)
BACKENDS = {"cpu": "gloo", "gpu": "nccl", "npu": "hccl"}
DEEPSPEED_HINT = "pip install 'anisora[deepspeed]'"


@dataclass(frozen=True)
class StrategySpec:
    """The `strategy` group's values (anisora.config.schema.StrategyConfig) as a plain object."""

    name: str = "single"
    process_group_backend: str | None = None
    find_unused_parameters: bool = False
    sharding_strategy: str = "FULL_SHARD"
    state_dict_type: str = "full"
    cpu_offload: bool = False
    stage: int = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False

    @classmethod
    def of(cls, value: str | Mapping[str, Any] | StrategySpec) -> StrategySpec:
        """A strategy name ("ddp"), a config mapping, or a spec."""
        if isinstance(value, StrategySpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(value).items() if k in known})


class AnyDeviceFSDPStrategy(FolderCheckpoints, FSDPStrategy):
    """FSDP on any accelerator. Being a subclass is what gets past Lightning's `type(strategy) is FSDPStrategy`
    check, which refuses FSDP on the CPU; on the CPU the model is wrapped here with `device_id=cpu` (torch's
    FSDP runs there over gloo, but Lightning passes the device index, None on the CPU, and FSDP then looks for
    an accelerator). Lightning's own wrapping then sees a wrapped model and leaves it as it is."""

    strategy_name = "fsdp_any_device"

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type == "cpu" and not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            kwargs = {k: v for k, v in self.kwargs.items()}
            self.kwargs.pop("auto_wrap_policy", None)  # applied here; Lightning would warn that it is ignored
            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                                             **kwargs)
        return super()._setup_model(model)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if not self._full_on_cpu():
            return super().lightning_module_state_dict()
        with full_state_dict_without_offload(self.model, rank0_only=True):
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if not self._full_on_cpu():
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer
        with full_state_dict_without_offload(self.model, rank0_only=True):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # the plain optimizer layout, as Lightning stores it
                state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state

    def _full_on_cpu(self) -> bool:
        """Full state dicts on the CPU: torch's `offload_to_cpu=True` (Lightning's choice) hands out CPU tensors
        that alias the unsharded weights FSDP frees right after, and saving them crashes (SIGSEGV)."""
        return self.root_device.type == "cpu" and self._state_dict_type == "full"


def full_state_dict_without_offload(module: nn.Module, rank0_only: bool):
    """FSDP's full state-dict context with copies instead of CPU offload (see `_full_on_cpu`)."""
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        FullyShardedDataParallel,
        StateDictType,
    )

    return FullyShardedDataParallel.state_dict_type(
        module, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))


class AnyDeviceDeepSpeedStrategy(FolderCheckpoints, DeepSpeedStrategy):
    """DeepSpeed on the CPU (tests) and NPUs as well as GPUs: only Lightning's CUDA-only accelerator check in
    `setup_environment` is skipped; DeepSpeed picks its own accelerator (DS_ACCELERATOR, else detection)."""

    strategy_name = "deepspeed_any_device"

    def setup_environment(self) -> None:
        super(DeepSpeedStrategy, self).setup_environment()

    @property
    def root_device(self) -> torch.device:
        """On the CPU, `cpu:<local rank>`: DeepSpeed reads the device index as the process's device rank."""
        device = super().root_device
        return torch.device("cpu", self.local_rank) if device.type == "cpu" else device

    def setup_distributed(self) -> None:
        if self.root_device.type != "cpu":
            return super().setup_distributed()
        # CPU devices carry no index, which Lightning's CUDA_VISIBLE_DEVICES-style index check cannot read
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()


def require_deepspeed() -> None:
    """One line naming the extra to install when DeepSpeed is missing or broken."""
    try:
        import deepspeed  # noqa: F401
    except Exception as ex:  # a broken install raises more than ImportError
        reason = str(ex).splitlines()[0][:120] if str(ex) else type(ex).__name__
        raise ConfigError("strategy", f"deepspeed needs the DeepSpeed package: {DEEPSPEED_HINT} ({reason})") from None


def device_count(devices: Any) -> int | None:
    """How many devices `accelerator.devices` selects; None when only the machine knows (-1, "auto")."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = -1 if text in ("auto", "-1") else int(text)
    return None if devices == -1 else int(devices)


def check_strategy(spec: StrategySpec, accelerator: str, devices: Any, precision: str, num_nodes: int = 1) -> None:
    """Fail in one line, before anything is built, on a combination that cannot run."""
    count = device_count(devices)
    if spec.name == "single" and count != 1:
        raise ConfigError("strategy", f"single runs on one device, but accelerator.devices={devices!r}: "
                          "use strategy=ddp, fsdp or deepspeed_zero2/zero3/zero3_offload")
    if spec.name == "single" and num_nodes > 1:
        raise ConfigError("strategy", f"single runs on one device, but accelerator.num_nodes={num_nodes}: "
                          "use strategy=ddp, fsdp or deepspeed_zero2/zero3/zero3_offload")
    if spec.name == "fsdp" and accelerator == "cpu" and precision != "32-true":
        raise ConfigError("accelerator.precision", f"FSDP on the CPU trains in 32-true; got {precision!r}")
    if spec.name == "deepspeed":
        if spec.offload_parameters and spec.stage != 3:
            raise ConfigError("strategy.offload_parameters", f"needs ZeRO stage 3; got stage={spec.stage}")
        require_deepspeed()


def check_ema(spec: StrategySpec, ema_decay: float) -> None:
    """EMA is a role whose weights FSDP shards exactly like the role it follows (so each rank averages its own
    shard); ZeRO-3 partitions parameters behind its own handles, which an EMA update cannot pair: refused there."""
    if ema_decay > 0 and spec.name == "deepspeed" and spec.stage == 3:
        raise ConfigError("optimizer.ema_decay", "EMA cannot pair ZeRO-3's partitioned weights: set "
                          "optimizer.ema_decay=0, or use strategy=fsdp, ddp or deepspeed_zero2")


def block_types_of(blocks: Iterable[nn.Module]) -> set[type[nn.Module]]:
    """The classes of a denoiser's repeated blocks: FSDP's wrapping unit."""
    return {type(b) for b in blocks}


def strategy_options(spec: StrategySpec, accelerator: str, block_types: set[type[nn.Module]] | None = None
                     ) -> dict[str, Any]:
    """Keyword arguments of the strategy class for `spec` (the NPU package passes them to its subclasses)."""
    backend = spec.process_group_backend or BACKENDS.get(accelerator)
    if spec.name == "ddp":
        return {"process_group_backend": backend, "find_unused_parameters": spec.find_unused_parameters}
    if spec.name == "fsdp":
        options: dict[str, Any] = {"process_group_backend": backend, "sharding_strategy": spec.sharding_strategy,
                                   "state_dict_type": spec.state_dict_type, "cpu_offload": spec.cpu_offload}
        if block_types:
            options["auto_wrap_policy"] = set(block_types)  # one FSDP unit per transformer block
        return options
    if spec.name == "deepspeed":
        return {"process_group_backend": backend, "stage": spec.stage, "offload_optimizer": spec.offload_optimizer,
                "offload_parameters": spec.offload_parameters}
    return {}


def build_strategy(spec: StrategySpec, accelerator: str, block_types: set[type[nn.Module]] | None = None
                   ) -> Strategy | str:
    """The Lightning strategy for a CPU, GPU or `auto` accelerator (NPUs: anisora.accelerators.npu)."""
    options = strategy_options(spec, accelerator, block_types)
    if spec.name == "single":
        return "auto"  # Lightning's single-device strategy on the accelerator's first device
    if spec.name == "ddp":
        return DDPStrategy(**options)
    if spec.name == "fsdp":
        return AnyDeviceFSDPStrategy(**options)
    if spec.name == "deepspeed":
        require_deepspeed()
        return AnyDeviceDeepSpeedStrategy(**options)
    raise ConfigError("strategy.name", f"expected one of single, ddp, fsdp, deepspeed; got {spec.name!r}")


def offloads_optimizer(strategy: Any) -> bool:
    """Whether the optimizer step runs on the CPU (DeepSpeed ZeRO-Offload)."""
    if not isinstance(strategy, DeepSpeedStrategy):
        return False
    zero = (strategy.config or {}).get("zero_optimization", {})
    return bool(zero.get("offload_optimizer"))


def adamw_class(strategy: Any) -> type[torch.optim.Optimizer]:
    """AdamW; DeepSpeed's CPU AdamW where ZeRO-Offload steps on the CPU (DeepSpeed refuses torch's there)."""
    if offloads_optimizer(strategy):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam  # adamw_mode=True is its default
    return torch.optim.AdamW


def clip_sharded_gradients(strategy: Any, max_norm: float) -> bool:
    """Clip by the global norm through FSDP's root module (Lightning's FSDP precision plugin refuses norm
    clipping, and torch's clip_grad_norm_ would see one shard); False where the strategy is not FSDP."""
    if not isinstance(strategy, FSDPStrategy):
        return False
    strategy.model.clip_grad_norm_(max_norm)
    return True
