"""Registers the schemas in Hydra's ConfigStore; primary configs and group options extend them."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from anisora.config import curate_schema, schema

_REGISTERED = False


def register_configs() -> None:
    """Idempotent: entry points and tests may both call it."""
    global _REGISTERED
    if _REGISTERED:
        return
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=schema.TrainTaskConfig)
    cs.store(name="infer_schema", node=schema.InferTaskConfig)
    cs.store(name="evaluate_schema", node=schema.EvaluateTaskConfig)
    cs.store(name="encode_schema", node=schema.EncodeTaskConfig)
    cs.store(name="curate_schema", node=curate_schema.CurateTaskConfig)
    cs.store(group="model", name="tiny_schema", node=schema.TinyModelConfig)
    cs.store(group="model", name="wan_schema", node=schema.WanModelConfig)
    cs.store(group="model", name="cogvideox5b_schema", node=schema.CogVideoXModelConfig)
    _REGISTERED = True
