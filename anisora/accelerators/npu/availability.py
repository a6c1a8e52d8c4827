"""Is there a usable NPU? Answered without side effects on machines that have no Ascend stack."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from anisora.config.errors import ConfigError

INSTALL_HINT = ("accelerator=npu needs torch_npu with Ascend CANN: on an Ascend host, source CANN's set_env.sh "
                "and pip install 'anisora[npu]'")
#: where a test backend registered under the name "npu" (PyTorch's PrivateUse1 mechanism) may stand in
TEST_BACKEND_ENV = "ANISORA_NPU_TEST_BACKEND"


def torch_npu_problem() -> str | None:
    """None when an NPU backend is importable and sees a device, else why not (one line)."""
    module = os.environ.get(TEST_BACKEND_ENV, "torch_npu")
    try:
        importlib.import_module(module)
    except Exception as ex:  # torch_npu raises more than ImportError without CANN
        return f"{INSTALL_HINT} ({module} is not importable: {type(ex).__name__}: {str(ex).splitlines()[0][:120]})"
    npu = getattr(torch, "npu", None)
    if npu is None or not npu.is_available() or npu.device_count() < 1:
        return f"{INSTALL_HINT} ({module} imports but torch.npu sees no device)"
    return None


def require_torch_npu() -> ModuleType:
    """`torch.npu`, or a one-line ConfigError naming what is missing."""
    problem = torch_npu_problem()
    if problem:
        raise ConfigError("accelerator.name", problem)
    return torch.npu
