"""VBench's model-based dimensions: the formulas on hand-computed features, the normalisation and weights of the
Quality aggregate, and every dimension on tiny random towers saved to and loaded from local folders."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from anisora.config.errors import ConfigError
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.rewards import build_scorer
from anisora.rewards.base import Clip
from anisora.rewards.vbench import consistency, i2v_consistency
from anisora.rewards.vbench_aggregate import quality, total


def test_consistency_is_the_mean_of_clamped_cosines_to_the_previous_and_first_frame():
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    c = 1 / math.sqrt(2)
    # t=1: prev cos 0.7071, first cos 0.7071 -> 0.7071; t=2: prev cos 0.7071, first cos 0 -> 0.3536
    assert consistency(f) == pytest.approx((c + c / 2) / 2)
    assert consistency(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 0.0  # negative cosines count as 0
    assert math.isnan(consistency(f[:1]))


def test_i2v_consistency_weights_the_guide_match_and_the_frame_steps():
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    guide = torch.tensor([0.0, 1.0])
    c = 1 / math.sqrt(2)
    assert i2v_consistency(guide, f) == pytest.approx(0.4 * 1.0 + 0.3 * c + 0.3 * c)
    steps = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # steps 1 and 0: mean 0.5, min 0
    assert i2v_consistency(torch.tensor([1.0, 0.0]), steps) == pytest.approx(0.4 + 0.3 * 0.5 + 0.0)


def test_clip_iqa_is_the_mean_softmax_weight_of_the_good_prompt():
    from anisora.rewards.vbench import clip_iqa

    good, bad = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    frames = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # cosines (1, 0) and (0.7071, 0.7071)
    expected = (1 / (1 + math.exp(-10.0)) + 0.5) / 2  # scale 10: softmax of (10, 0), then of two equal logits
    assert clip_iqa(frames, good, bad, 10.0) == pytest.approx(expected)


def test_quality_normalises_with_vbench_ranges_and_halves_dynamic_degree():
    means = {"subject_consistency": 1.0, "temporal_flickering": 0.6293, "dynamic_degree": 1.0,
             "motion_smoothness_blend": 0.706, "speed_error": 3.0}
    out = quality(means)
    # normalised: 1, 0, 1 (weight 0.5), 0 (the blend proxy for motion smoothness) -> (1 + 0 + 0.5 + 0) / 3.5
    assert out["vbench_quality"] == pytest.approx(1.5 / 3.5) and out["vbench_quality_dims"] == 4
    assert quality({"speed_error": 1.0}) == {}
    assert total(0.8, 0.3) == pytest.approx(0.7)


def tiny_towers(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    dino = ViTModel(ViTConfig(**tower, image_size=32, patch_size=16), add_pooling_layer=False)
    dino.save_pretrained(tmp_path / "dino")
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    text = dict(**tower, vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=len(vocab) - 2,
                eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    for name, width in (("clip", 8), ("clip_large", 12)):
        config = CLIPConfig(text_config=text, vision_config=dict(**tower, image_size=32, patch_size=16),
                            projection_dim=width)
        CLIPModel(config).save_pretrained(tmp_path / name)
        CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(tmp_path / name)
    torch.save({"weight": torch.randn(1, 12), "bias": torch.tensor([50.0])}, tmp_path / "head.pth")
    return {"name": "vbench", "dino": str(tmp_path / "dino"), "clip": str(tmp_path / "clip"),
            "clip_large": str(tmp_path / "clip_large"), "aesthetic_head": str(tmp_path / "head.pth"),
            "accelerator": "cpu"}


def test_every_model_dimension_runs_on_tiny_random_towers(tmp_path):
    scorer = build_scorer(tiny_towers(tmp_path))
    c = make_clip(WorldConfig(), 0, "benchmark", 0)
    guided = Clip(name="g", frames=c.video, prompt=c.caption, guide_indices=[0], guide_frames=c.video[:1].copy())
    still = Clip(name="s", frames=np.repeat(c.video[:1], 5, axis=0))
    moving, frozen = scorer.score([guided, still])
    assert set(moving) == set(scorer.dimensions) == {"subject_consistency", "i2v_subject", "background_consistency",
                                                     "i2v_background", "text_video_consistency", "aesthetic_quality",
                                                     "imaging_quality_clipiqa"}
    assert 0.0 < moving["imaging_quality_clipiqa"] < 1.0
    assert frozen["subject_consistency"] == pytest.approx(1.0)
    assert frozen["background_consistency"] == pytest.approx(1.0)
    assert 0.0 <= moving["subject_consistency"] <= 1.0 and 0.0 <= moving["i2v_subject"] <= 1.0
    assert math.isnan(frozen["i2v_subject"]) and math.isnan(frozen["text_video_consistency"])  # no guide, no prompt
    assert -1.0 <= moving["text_video_consistency"] <= 1.0
    assert 4.0 < moving["aesthetic_quality"] < 6.0  # bias 50 / 10 plus a unit-feature term of |w| ~ 3.5


def test_unconfigured_weights_leave_their_dimensions_out_with_a_notice(caplog):
    with caplog.at_level(logging.INFO, logger="anisora.rewards"):
        scorer = build_scorer({"name": "vbench", "accelerator": "cpu"})
    assert scorer.dimensions == ()
    assert "subject_consistency left out: set reward.dino=PATH" in caplog.text
    assert "aesthetic_quality left out: set reward.clip_large=PATH and reward.aesthetic_head=PATH" in caplog.text


def test_a_missing_or_wrong_weights_path_fails_in_one_line(tmp_path):
    cfg = tiny_towers(tmp_path)
    for change, key in (({"dino": str(tmp_path / "nope")}, "reward.dino"), ({"clip": cfg["dino"]}, "reward.clip"),
                        ({"aesthetic_head": str(tmp_path / "nope.pth")}, "reward.aesthetic_head")):
        with pytest.raises(ConfigError) as err:
            build_scorer({**cfg, **change})
        assert err.value.key == key and "\n" not in str(err.value)
    torch.save({"weight": torch.randn(1, 7)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"Linear\(12, 1\)"):
        build_scorer({**cfg, "aesthetic_head": str(tmp_path / "bad.pth")})
