"""Checks a composed config against its schema metadata before anything expensive starts."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anisora.config.errors import ConfigError


def check_node(node: DictConfig, prefix: str) -> None:
    """Recursively check `choices`, `min` and `max` metadata of structured nodes."""
    schema = OmegaConf.get_type(node)
    if schema is None or not dataclasses.is_dataclass(schema):
        return
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in node:
            continue
        child = node._get_node(f.name)
        if isinstance(child, DictConfig):  # a nested section: its own schema's limits apply
            check_node(child, key)
            continue
        if OmegaConf.is_interpolation(node, f.name):
            continue  # checked where check_config runs, after resolving (it may need Hydra's runtime)
        value = node[f.name]
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(key, f"expected one of {', '.join(map(str, choices))}; got {value!r}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if value is not None and lo is not None and value < lo:
            raise ConfigError(key, f"must be >= {lo}; got {value!r}")
        if value is not None and hi is not None and value > hi:
            raise ConfigError(key, f"must be <= {hi}; got {value!r}")


def check_config(cfg: DictConfig, groups: list[str]) -> None:
    """Resolve every interpolation and check every group; raises a one-line ConfigError."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as ex:
        key = getattr(ex, "full_key", None) or "config"
        raise ConfigError(str(key), str(ex).splitlines()[0]) from None
    for group in groups:
        if group in cfg and isinstance(cfg[group], DictConfig):
            check_node(cfg[group], group)
    check_node(cfg, "")
