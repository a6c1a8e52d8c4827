"""Entry-point wrapper: every bad input ends as one line on stderr and exit code 2.

Hydra prints multi-line reports for composition errors; this wrapper lets Hydra raise instead
(HYDRA_FULL_ERROR) and rewrites the errors it knows into one line naming the key and what is
allowed. Anything unexpected keeps its full traceback.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from anisora.config.errors import ConfigError

#: keys that moved elsewhere, and where
MOVED = {"accelerator.strategy": "strategies are a group now: strategy=single, ddp, fsdp, deepspeed_zero2, "
                                 "deepspeed_zero3 or deepspeed_zero3_offload"}


def _allowed_keys(config_dir: str, config_name: str, parent: str) -> list[str]:
    """Keys that exist under `parent` in the config composed without the user's overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name=config_name)
        node = cfg
        for part in [p for p in parent.split(".") if p]:
            node = node[part]
        return sorted(node.keys()) if isinstance(node, DictConfig) else []
    except Exception:
        return []


def describe(ex: BaseException, config_dir: str, config_name: str) -> str | None:
    """A one-line description of a known bad-input error, or None for a real bug."""
    if isinstance(ex, ConfigError):
        return str(ex)
    cause = ex.__cause__ or ex
    unknown = isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and " not in " in str(cause)
    if isinstance(ex, ConfigCompositionException) and unknown:
        key = str(getattr(cause, "full_key", "") or "")
        match = re.search(r"Could not override '([^']+)'", str(ex))
        key = key or (match.group(1) if match else "?")
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _allowed_keys(config_dir, config_name, parent)
        where = f"in '{parent}'" if parent else "at the top level"
        moved = f"; {MOVED[key]}" if key in MOVED else ""
        return f"{key}: unknown config key; allowed {where}: {', '.join(allowed) or '(none)'}{moved}"
    if isinstance(cause, (ValidationError, OmegaConfBaseException)) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    if isinstance(ex, MissingConfigException):
        lines = [line.strip() for line in str(ex).splitlines() if line.strip()]
        match = re.search(r"Could not find '([^']+)'", lines[0]) if lines else None
        options = [line for line in lines[2:] if not line.endswith(":") and "=" not in line
                   and not line.endswith("_schema")]
        if match and "/" in match.group(1):
            group, option = match.group(1).rsplit("/", 1)
            return f"{group}={option}: no such option; available: {', '.join(options) or '(none)'}"
        return lines[0] if lines else str(ex)
    if isinstance(ex, (OverrideParseException, ConfigCompositionException)):
        return " ".join(str(ex).split())
    if isinstance(ex, FileNotFoundError):
        return str(ex).splitlines()[0]
    return None


def one_line_errors(config_name: str, config_dir: str | Path) -> Callable:
    """Decorates a `@hydra.main` function (see train.py)."""

    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapped(*args, **kwargs):
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                return main(*args, **kwargs)
            except Exception as ex:
                message = describe(ex, str(config_dir), config_name)
                if message is None:
                    raise
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)

        return wrapped

    return decorate
