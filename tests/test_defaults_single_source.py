"""One source for each default: every runtime spec agrees with its config schema, every schema choice is
accepted where it is consumed, and every option of the speedup and model groups composes and validates."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import ROOT, compose
from omegaconf import OmegaConf

from anisora.accelerators.strategies import StrategySpec
from anisora.backbones.cogvideox import EMPTY_PROMPT, LATENT_SAMPLING, CogVideoXSpec, vae_dtype
from anisora.backbones.families import FAMILIES, latent_grid
from anisora.backbones.tiny import TinyBackboneSpec
from anisora.backbones.wan_loading import WanSpec
from anisora.config import schema
from anisora.config.validate import check_node
from anisora.guidance.policy import TrainGuidePolicy
from anisora.inference.speedups import SpeedupSpec
from anisora.inference.speedups import context_parallel as cp
from anisora.inference.speedups.apply import problems

PAIRS = [
    (TinyBackboneSpec, schema.TinyModelConfig),
    (WanSpec, schema.WanModelConfig),
    (CogVideoXSpec, schema.CogVideoXModelConfig),
    (SpeedupSpec, schema.SpeedupConfig),
    (StrategySpec, schema.StrategyConfig),
    (TrainGuidePolicy, schema.GuideConfig),
]


def defaults(cls: type) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def choices(cls: type, name: str) -> tuple:
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


@pytest.mark.parametrize(("spec", "config"), PAIRS, ids=[s.__name__ for s, _ in PAIRS])
def test_spec_defaults_equal_schema_defaults(spec, config):
    ours, theirs = defaults(spec), defaults(config)
    shared = sorted(set(ours) & set(theirs))
    assert shared, f"{spec.__name__} and {config.__name__} share no field"
    drift = {k: (ours[k], theirs[k]) for k in shared if ours[k] != theirs[k]}
    assert not drift, f"{spec.__name__} vs {config.__name__}: {drift}"


@pytest.mark.parametrize("spec", [TinyBackboneSpec, WanSpec, CogVideoXSpec])
def test_build_specs_hold_every_network_field_of_their_schema(spec):
    from anisora.backbones.specs import NON_NETWORK_KEYS

    config = dict(zip([s for s, _ in PAIRS], [c for _, c in PAIRS]))[spec]
    network = {f.name for f in dataclasses.fields(config)} - set(NON_NETWORK_KEYS) - {"_target_"}
    assert {f.name for f in dataclasses.fields(spec)} == network


@pytest.mark.parametrize("cache", choices(schema.SpeedupConfig, "cache"))
def test_every_cache_choice_is_accepted(cache):
    spec = SpeedupSpec(cache=cache, mag_ratios=[1.0, 0.9])
    assert "speedup.cache" not in dict(problems(spec, torch.device("cpu")))


def test_context_parallel_kinds_match():
    assert tuple(cp.KINDS) == choices(schema.SpeedupConfig, "context_parallel_kind")


def test_cogvideox_choices_are_accepted():
    assert set(EMPTY_PROMPT) == set(choices(schema.CogVideoXModelConfig, "empty_prompt"))
    assert set(LATENT_SAMPLING) == set(choices(schema.CogVideoXModelConfig, "latent_sampling"))
    for value in choices(schema.CogVideoXModelConfig, "vae_dtype"):
        assert vae_dtype(CogVideoXSpec(vae_dtype=value), torch.bfloat16) in (torch.bfloat16, torch.float32)


@pytest.mark.parametrize("config", [schema.TinyModelConfig, schema.WanModelConfig, schema.CogVideoXModelConfig])
def test_every_model_kind_is_a_registered_family(config):
    assert set(choices(config, "kind")) <= set(FAMILIES)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "speedup").glob("*.yaml")))
def test_every_speedup_option_composes_and_validates(name):
    cfg = compose("infer", [f"speedup={name}"])
    check_node(cfg, "")
    spec = SpeedupSpec.from_config(cfg.speedup)
    assert "speedup.cache" not in dict(problems(spec, torch.device("cpu")))


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))
def test_every_model_option_has_a_latent_grid(name):
    model = OmegaConf.to_container(compose("infer", [f"model={name}"]).model, resolve=True)
    temporal, spatial, patch = latent_grid(model)
    assert temporal >= 1 and spatial >= 1 and patch >= 1
