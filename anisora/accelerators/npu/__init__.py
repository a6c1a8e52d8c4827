"""Ascend NPU for Lightning: the only package that names `torch.npu` or imports `torch_npu`.

Lightning ships no NPU support and silently falls back to CUDA-shaped defaults for a custom
accelerator (CPU strategies, CUDA autocast, CUDA streams in DDP, FSDP refused). So an NPU run gets
explicit objects from `trainer_kwargs`: the accelerator, an NPU strategy subclass and an NPU
precision plugin. `torch_npu` is imported lazily: on a machine without it (or without Ascend CANN)
`accelerator=npu` fails at once with one line that says what to install.
"""

from anisora.accelerators.npu.accelerator import NPUAccelerator, register_npu
from anisora.accelerators.npu.availability import require_torch_npu, torch_npu_problem
from anisora.accelerators.npu.precision import NPUFSDPPrecision, npu_precision_plugin
from anisora.accelerators.npu.strategies import NPUDDPStrategy, NPUFSDPStrategy, SingleNPUStrategy
from anisora.accelerators.npu.trainer_args import trainer_kwargs

__all__ = ["NPUAccelerator", "NPUDDPStrategy", "NPUFSDPPrecision", "NPUFSDPStrategy", "SingleNPUStrategy",
           "npu_precision_plugin", "register_npu", "require_torch_npu", "torch_npu_problem", "trainer_kwargs"]
