"""The ground-truth and weighted scorers, the reward group's options, and clips built from tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf

from anisora.config.errors import ConfigError
from anisora.config.schema import RewardConfig
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.evaluation.metrics import PSNR_CAP
from anisora.inference.pipeline import from_uint8_frames
from anisora.rewards import build_scorer, clips_from_tensors
from anisora.rewards.base import Clip, Scorer
from anisora.rewards.ground_truth import GroundTruthScorer, speed_score
from anisora.rewards.weighted import WeightedScorer

WORLD = WorldConfig()


def synthetic(direction: str = "right", motion: float = 2.0) -> Clip:
    c = make_clip(WORLD, 0, "benchmark", 0, motion_score=motion, direction=direction)
    return Clip(name="c", frames=c.video, prompt=c.caption, truth=c.truth.to_json())


def test_ground_truth_scores_a_rendered_clip_as_right_and_its_reverse_as_wrong():
    clip = synthetic("right")
    reverse = Clip(name="r", frames=clip.frames[::-1].copy(), truth=clip.truth)
    good, bad = GroundTruthScorer().score([clip, reverse])
    assert good["direction_correct"] == 1.0 and bad["direction_correct"] == 0.0
    assert good["speed_error"] < 0.05 and good["speed_score"] > 0.97  # the renderer's own speed, measured
    assert bad["speed_score"] == pytest.approx(good["speed_score"])  # same speed, other way
    assert good["colour_consistency"] == 1.0
    assert 0.9 < good["temporal_flickering"] < 1.0
    assert math.isnan(good["guide_psnr"])  # no guides given


def test_ground_truth_without_truth_keeps_what_applies():
    frames = synthetic().frames
    (row,) = GroundTruthScorer().score([Clip(name="x", frames=frames)])
    assert all(math.isnan(row[k]) for k in ("direction_correct", "speed_error", "speed_score", "colour_consistency"))
    assert row["temporal_flickering"] > 0.9
    assert set(row) == set(GroundTruthScorer.dimensions)


def test_colour_consistency_counts_frames_where_the_sprite_colour_is_found():
    clip = synthetic()
    frames = clip.frames.copy()
    frames[:4] = frames[0].mean(axis=(0, 1)).astype(np.uint8)  # 4 of 17 frames lose the sprite
    (row,) = GroundTruthScorer().score([Clip(name="x", frames=frames, truth=clip.truth)])
    assert row["colour_consistency"] == pytest.approx(13 / 17)


def test_speed_score_is_linear_in_the_relative_error_and_bounded():
    assert speed_score(1.0, 1.0) == 1.0
    assert speed_score(1.5, 1.0) == pytest.approx(0.5)
    assert speed_score(0.25, 1.0) == pytest.approx(0.25)
    assert speed_score(3.0, 1.0) == 0.0
    assert math.isnan(speed_score(1.0, math.nan)) and math.isnan(speed_score(1.0, 0.0))


def test_guide_psnr_is_measured_inside_the_kept_region_of_each_guided_frame():
    frames = np.full((5, 8, 8, 3), 100, dtype=np.uint8)
    given = frames[[0, 4]].copy()
    given[1, :4] += 10  # frame 4: the top half differs by 10 levels -> PSNR 10 log10(255^2 / 100) there
    keep = np.ones((2, 8, 8), dtype=bool)
    clip = Clip(name="g", frames=frames, guide_indices=[0, 4], guide_frames=given, guide_keep=keep)
    (row,) = GroundTruthScorer().score([clip])
    half = 10 * math.log10(255**2 / 50.0)  # MSE over the whole frame: half the pixels off by 10
    assert row["guide_psnr_min"] == pytest.approx(half)
    assert row["guide_psnr"] == pytest.approx((PSNR_CAP + half) / 2)
    keep[1, :4] = False  # the differing half is not given: frame 4 matches where it is kept
    (row,) = GroundTruthScorer().score([clip])
    assert row["guide_psnr_min"] == PSNR_CAP


class Fixed(Scorer):
    dimensions = ("a", "err")
    higher_is_better = ("a",)

    def __init__(self, rows):
        self.rows = rows

    def score(self, clips):
        return self.rows[: len(clips)]


def test_weighted_sums_weights_times_scores_and_skips_dimensions_that_do_not_apply():
    part = Fixed([{"a": 0.5, "err": 2.0}, {"a": math.nan, "err": 1.0}])
    scorer = WeightedScorer([part], {"a": 2.0, "err": -0.5})
    clips = [Clip(name=str(i), frames=np.zeros((2, 2, 2, 3), np.uint8)) for i in range(2)]
    first, second = scorer.score(clips)
    assert first["reward"] == pytest.approx(2.0 * 0.5 - 0.5 * 2.0)
    assert second["reward"] == pytest.approx(-0.5)
    assert first["a"] == 0.5 and scorer.dimensions == ("reward", "a", "err")
    assert scorer.higher_is_better == ("reward", "a")


@pytest.mark.parametrize(("weights", "key"), [({"nope": 1.0}, "reward.weights.nope"),
                                              ({"err": 1.0}, "reward.weights.err"),
                                              ({}, "reward.weights")])
def test_weighted_refuses_unknown_dimensions_rewarded_errors_and_no_weights(weights, key):
    with pytest.raises(ConfigError) as err:
        WeightedScorer([Fixed([])], weights)
    assert err.value.key == key


@pytest.mark.parametrize("option", sorted(p.stem for p in (ROOT / "conf" / "reward").glob("*.yaml")))
def test_every_reward_option_builds_a_scorer_from_its_schema(option):
    node = OmegaConf.load(ROOT / "conf" / "reward" / f"{option}.yaml")
    node.pop("defaults", None)
    cfg = OmegaConf.merge(OmegaConf.structured(RewardConfig), node)
    if option == "learned":  # needs a trained reward model (tests/test_reward_model.py builds one)
        with pytest.raises(ConfigError, match=r"^reward\.ckpt: expected a method=reward_model checkpoint"):
            build_scorer(cfg)
        return
    scorer = build_scorer(cfg)
    (row,) = scorer.score([synthetic("down")])
    assert set(row) == set(scorer.dimensions)
    assert set(scorer.higher_is_better) <= set(scorer.dimensions)


def test_weighted_option_rewards_a_rendered_clip_fully():
    cfg = {"name": "weighted", "scorers": ["ground_truth"],
           "weights": {"direction_correct": 1.0, "colour_consistency": 0.5, "speed_error": -1.0}}
    (row,) = build_scorer(cfg).score([synthetic("left")])
    assert row["reward"] == pytest.approx(1.5 - row["speed_error"])


def test_build_scorer_names_the_key_of_a_bad_name():
    with pytest.raises(ConfigError, match="reward.name"):
        build_scorer({"name": "nope"})


def test_clips_from_tensors_keeps_the_guided_frames_and_their_regions():
    clip = synthetic("up")
    pixels = from_uint8_frames(clip.frames)[None]  # (1, 3, F, H, W)
    mask = torch.zeros(1, 17, 32, 32)
    mask[0, 0] = 1.0
    mask[0, 16, :, :16] = 1.0
    guide = pixels * mask[:, None]
    (out,) = clips_from_tensors(pixels, guide, mask, prompts=[clip.prompt], truths=[clip.truth])
    assert out.guide_indices == [0, 16]
    np.testing.assert_array_equal(out.frames, clip.frames)
    np.testing.assert_array_equal(out.guide_frames[0], clip.frames[0])
    assert out.guide_keep[1, :, :16].all() and not out.guide_keep[1, :, 16:].any()
    (row,) = GroundTruthScorer().score([out])
    assert row["guide_psnr"] == PSNR_CAP and row["direction_correct"] == 1.0
    with pytest.raises(ValueError, match="prompts"):
        clips_from_tensors(pixels, prompts=["a", "b"])
