"""Build specs derived from the model config schemas, so each architecture default is written once.

A family's build spec is its schema (anisora.config.schema) minus the keys that describe training rather
than the network (`NON_NETWORK_KEYS`) and Hydra's `_target_`: same field names, types and defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: keys of a model config that describe training, weights policy or the clip, not the network
NON_NETWORK_KEYS = ("kind", "init", "objective", "native", "offload_encoders", "lora")


def spec_class(name: str, schema: type, module: str, doc: str) -> type:
    """A dataclass `name` with the network fields of `schema`, defaults and all (set in `module`)."""
    specs = []
    for f in dataclasses.fields(schema):
        if f.name in NON_NETWORK_KEYS or f.name == "_target_":
            continue
        default: dict[str, Any] = ({"default_factory": f.default_factory}
                                   if f.default_factory is not dataclasses.MISSING else {"default": f.default})
        specs.append((f.name, f.type, dataclasses.field(metadata=f.metadata, **default)))
    cls = dataclasses.make_dataclass(name, specs, namespace={"__doc__": doc})
    cls.__module__ = module
    return cls


def choices_of(schema: type, name: str) -> tuple[str, ...]:
    """The values a schema field accepts (its `choices` metadata), for the code that consumes them."""
    return tuple(next(f for f in dataclasses.fields(schema) if f.name == name).metadata["choices"])
