"""Every primary config composes with its schema; groups and experiments compose too."""

from __future__ import annotations

import pytest
from conftest import ROOT, compose
from omegaconf import OmegaConf

from anisora.config.validate import check_node


@pytest.mark.parametrize("name", ["train", "infer", "evaluate", "encode", "curate"])
def test_primary_configs_compose_and_validate(name):
    cfg = compose(name, [])
    assert cfg.task_name == name
    check_node(cfg, "")


@pytest.mark.parametrize("name", ["train", "infer", "evaluate", "encode"])
@pytest.mark.parametrize("model", sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))
def test_every_model_composes_with_every_task(name, model):
    cfg = compose(name, [f"model={model}"])
    check_node(cfg, "")


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    primary = "rl_finetune" if "override /rl:" in (ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text() \
        or experiment.startswith("anisora_rl") else "train"  # RL presets are rl_finetune.py's
    cfg = compose(primary, [f"experiment={experiment}"])
    check_node(cfg, "")


@pytest.mark.parametrize("override", ["guide=i2v", "guide=flf2v", "sampler=unipc", "accelerator=cpu",
                                      "accelerator=gpu", "accelerator=npu", "logger=csv", "logger=none", "debug=fast",
                                      "data=shards"])
def test_group_options_compose(override):
    cfg = compose("train", [override])
    check_node(cfg, "")


def test_flf2v_gives_first_and_last_index():
    assert list(compose("infer", ["guide=flf2v"]).guide.indices) == [0, -1]


def test_schema_keeps_yaml_values_typed():
    cfg = compose("train", ["trainer.max_steps=7"])
    assert cfg.trainer.max_steps == 7 and isinstance(cfg.trainer.max_steps, int)
    assert OmegaConf.get_type(cfg.trainer).__name__ == "TrainerConfig"
