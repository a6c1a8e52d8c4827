"""Weight-free dimensions pinned on hand-computed cases: VBench's dynamic-degree rule (top 5 %, threshold, count),
the blend proxy of motion smoothness, static detection, SSIM inside a region, and the scorer on rendered clips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anisora.data.synthetic import WorldConfig, make_clip
from anisora.rewards import build_scorer
from anisora.rewards.base import Clip
from anisora.rewards.fidelity import masked_ssim, ssim_map
from anisora.rewards.motion import (
    dynamic_scores,
    dynamic_threshold,
    is_dynamic,
    motion_smoothness_blend,
    moving_pairs_needed,
    static_scores,
    top_flow_magnitude,
    vbench_frame_step,
)


def test_top_flow_magnitude_is_the_mean_of_the_largest_five_percent():
    flow = np.zeros((100, 100, 2), dtype=np.float32)
    flow.reshape(-1, 2)[:400] = (3.0, 4.0)  # 400 of the top 500 magnitudes are 5, the other 100 are 0
    assert top_flow_magnitude(flow) == pytest.approx(4.0)
    flow.reshape(-1, 2)[:600] = (3.0, 4.0)
    assert top_flow_magnitude(flow) == pytest.approx(5.0)


def test_dynamic_threshold_and_count_follow_vbench():
    assert dynamic_threshold(256, 512) == 6.0
    assert dynamic_threshold(480, 832) == pytest.approx(11.25)
    assert [moving_pairs_needed(n) for n in (16, 17, 6, 10, 81)] == [4, 4, 2, 2, 20]  # round half to even
    assert vbench_frame_step(24) == 3 and vbench_frame_step(30) == 4 and vbench_frame_step(None) == 1
    threshold = dynamic_threshold(256, 256)
    four_frames_above = [threshold + 0.1] * 3 + [threshold] * 12  # 16 frames: 3 pairs above, 12 at the threshold
    assert not is_dynamic(four_frames_above, 256, 256, 16)  # strictly above, and 4 are needed
    assert is_dynamic([threshold + 0.1] * 4 + [0.0] * 11, 256, 256, 16)


def test_dynamic_scores_read_every_kth_frame_at_vbench_rate():
    seen = []

    def flow(a, b):
        seen.append((int(a[0, 0, 0]), int(b[0, 0, 0])))
        return np.full((*a.shape[:2], 2), 1.0, dtype=np.float32)  # magnitude sqrt(2) everywhere

    frames = np.stack([np.full((16, 16, 3), i, dtype=np.uint8) for i in range(9)])
    out = dynamic_scores(frames, flow, fps=24.0)
    assert seen == [(0, 3), (3, 6)]
    assert out["flow_magnitude"] == pytest.approx(math.sqrt(2))
    assert out["dynamic_degree"] == 1.0  # sqrt(2) > 6 * 16 / 256 = 0.375, and round(4 * 3 / 16) = 1 pair needed


def test_motion_smoothness_blend_is_exact_on_linear_change_and_drops_on_jitter():
    ramp = np.stack([np.full((4, 4, 3), 10 * i, dtype=np.uint8) for i in range(7)])
    assert motion_smoothness_blend(ramp) == 1.0
    jitter = np.stack([np.full((4, 4, 3), 50 * (i % 2), dtype=np.uint8) for i in range(7)])
    assert motion_smoothness_blend(jitter) == pytest.approx((255 - 50) / 255)
    assert math.isnan(motion_smoothness_blend(ramp[:2]))


def test_static_detection_flags_a_frozen_clip_only():
    clip = make_clip(WorldConfig(), 0, "benchmark", 0, motion_score=2.0, direction="right").video
    frozen = np.repeat(clip[:1], len(clip), axis=0)
    assert static_scores(frozen, 8, 10.0, 0.002) == {"changed_fraction": 0.0, "static": 1.0}
    moving = static_scores(clip, 8, 10.0, 0.002)
    assert moving["static"] == 0.0 and moving["changed_fraction"] > 0.05
    assert math.isnan(static_scores(frozen, 8, 10.0, None)["static"])


def test_ssim_of_a_constant_shift_and_inside_a_mask():
    a = np.full((16, 16, 3), 100, dtype=np.uint8)
    b = a + 10
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)  # no variance: only the luminance term remains
    np.testing.assert_allclose(ssim_map(a, b), expected, rtol=1e-9)
    assert masked_ssim(a, a) == pytest.approx(1.0)
    noisy = a.copy()
    noisy[:, 8:] = np.random.default_rng(0).integers(0, 255, (16, 8, 3), dtype=np.uint8)
    keep = np.zeros((16, 16), dtype=bool)
    keep[:, :2] = True  # far from the noisy half (beyond the 11-pixel window's reach of most weight)
    assert masked_ssim(noisy, a, keep) > 0.99 > masked_ssim(noisy, a)
    assert math.isnan(masked_ssim(a, b, np.zeros((16, 16), dtype=bool)))


def test_weight_free_scorer_on_rendered_clips():
    world = WorldConfig()
    moving = make_clip(world, 0, "benchmark", 1, motion_score=3.0, direction="down").video
    frozen = np.repeat(moving[:1], len(moving), axis=0)
    guided = Clip(name="m", frames=moving, guide_indices=[0], guide_frames=moving[:1].copy(),
                  guide_keep=np.ones((1, 32, 32), dtype=bool))
    scorer = build_scorer({"name": "weight_free"})
    fast, still = scorer.score([guided, Clip(name="s", frames=frozen)])
    assert set(fast) == set(scorer.dimensions)
    assert fast["dynamic_degree"] == 1.0 and still["dynamic_degree"] == 0.0
    assert fast["flow_magnitude"] > 1.0 > 0.375 > 3 * still["flow_magnitude"]  # threshold 6 * 32 / 256
    assert fast["static"] == 0.0 and still["static"] == 1.0
    assert still["temporal_flickering"] == 1.0 and still["motion_smoothness_blend"] == 1.0
    assert 0.8 < fast["motion_smoothness_blend"] < 1.0
    assert fast["guide_ssim"] == pytest.approx(1.0) and fast["guide_psnr"] == 100.0
    assert math.isnan(still["guide_ssim"])
