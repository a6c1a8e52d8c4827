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
    cs.store(group="model", name="tiny_cogvideox_schema", node=schema.TinyCogVideoXModelConfig)
    cs.store(group="model", name="wan_schema", node=schema.WanModelConfig)
    cs.store(group="model", name="cogvideox5b_schema", node=schema.CogVideoXModelConfig)
    cs.store(group="reward", name="reward_schema", node=schema.RewardConfig)
    cs.store(group="method", name="reward_model_schema", node=schema.RewardModelConfig)
    cs.store(name="rl_finetune_schema", node=schema.RLFinetuneTaskConfig)
    cs.store(group="rl", name="pairwise_schema", node=schema.PairwiseRLConfig)
    cs.store(group="rl", name="rwr_schema", node=schema.RWRConfig)
    cs.store(group="rl", name="grpo_schema", node=schema.GRPOConfig)
    _REGISTERED = True


def compose_in_process(config_dir: str, config_name: str, overrides: list[str]):
    """A primary config composed without @hydra.main (tests, benchmarks), with Hydra's runtime fields set as in
    a real run so that interpolations such as `${hydra:runtime.cwd}` resolve; the result keeps its `hydra` node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg
