"""The method group: methods come by `_target_`, unknown options fail in one line (a method with several roles
training, resuming and sampling is tests/test_distill.py's DMD)."""

from __future__ import annotations

import pytest
from conftest import compose

from anisora.config.errors import ConfigError


def test_an_unknown_method_option_or_class_fails_in_one_line():
    from anisora.tasks.train import method_class

    with pytest.raises(ConfigError, match=r"^method\.warp: SFTMethod has no such option$"):
        method_class(compose("train", ["+method.warp=1"]).method)
    with pytest.raises(ConfigError, match=r"^method\._target_: cannot import"):
        method_class(compose("train", ["method._target_=nowhere.Method"]).method)
    with pytest.raises(ConfigError, match=r"is not a DiffusionMethod"):
        method_class(compose("train", ["method._target_=torch.nn.Linear"]).method)
