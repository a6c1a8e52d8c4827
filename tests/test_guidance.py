"""Mask folding against hand-worked examples, (G, M) construction, and the training draw."""

from __future__ import annotations

import pytest
import torch

from anisora.config.errors import ConfigError
from anisora.guidance.fold import downsample_mask, fold_mask_wan
from anisora.guidance.pair import guide_pair, pair_from_video, resolve_index
from anisora.guidance.policy import TrainGuidePolicy


def frames_mask(num_frames: int, given: list[int], h: int = 2, w: int = 2) -> torch.Tensor:
    m = torch.zeros(1, num_frames, h, w)
    m[:, given] = 1
    return m


def test_first_frame_fills_all_four_channels_of_slot_zero():
    folded = fold_mask_wan(frames_mask(9, [0]), 4, 2, 2)
    assert folded.shape == (1, 4, 3, 2, 2)
    assert folded[0, :, 0].eq(1).all()  # frame 0 repeated four times
    assert folded[0, :, 1:].eq(0).all()


def test_last_frame_is_channel_three_of_last_slot():
    folded = fold_mask_wan(frames_mask(9, [8]), 4, 2, 2)
    expected = torch.zeros(4, 3)
    expected[3, 2] = 1  # frame 8 = slot (8-1)//4+1 = 2, channel (8-1)%4 = 3
    assert torch.equal(folded[0, :, :, 0, 0], expected)


def test_frames_that_share_a_slot_use_their_own_channels():
    folded = fold_mask_wan(frames_mask(9, [1, 2, 4]), 4, 2, 2)
    expected = torch.zeros(4, 3)
    expected[0, 1] = expected[1, 1] = expected[3, 1] = 1  # frames 1, 2, 4 all live in slot 1
    assert torch.equal(folded[0, :, :, 0, 0], expected)


def test_spatial_mask_downsamples_by_majority():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1  # top half given
    m[..., 2, 0] = 1  # one stray pixel in a cell of four: not a majority
    small = downsample_mask(m, 2, 2)
    assert small[0, 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_fold_refuses_a_frame_count_off_the_grid():
    with pytest.raises(ValueError, match="4n\\+1"):
        fold_mask_wan(frames_mask(8, [0]), 4, 2, 2)


def test_guide_pair_places_images_and_counts_from_the_end():
    img_a, img_b = torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -0.25)
    video, mask = guide_pair([(0, img_a), (-1, img_b)], 5, 4, 4)
    assert torch.equal(video[:, 0], img_a) and torch.equal(video[:, 4], img_b)
    assert video[:, 1:4].eq(0).all()
    assert mask.sum(dim=(1, 2)).tolist() == [16, 0, 0, 0, 16]


def test_pair_from_video_keeps_only_the_chosen_frames():
    clip = torch.rand(3, 5, 4, 4)
    video, mask = pair_from_video(clip, [2])
    assert torch.equal(video[:, 2], clip[:, 2]) and video[:, [0, 1, 3, 4]].eq(0).all()
    assert mask[2].eq(1).all() and mask[[0, 1, 3, 4]].eq(0).all()


def test_out_of_range_index_names_the_key():
    with pytest.raises(ConfigError, match=r"guide.frames: frame index 9 is outside a clip of 9 frames"):
        resolve_index(9, 9)
    assert resolve_index(-1, 9) == 8


def test_policy_frequencies_match_anisora_v1():
    policy = TrainGuidePolicy()
    gen = torch.Generator().manual_seed(0)
    n, frames = 20000, 17
    draws = [policy.draw(frames, gen) for _ in range(n)]
    dropped = sum(not d.frames for d in draws) / n
    text = sum(d.drop_text for d in draws) / n
    kept = [d for d in draws if d.frames]
    first_only = sum(d.frames == (0,) for d in kept) / len(kept)
    two = sum(len(d.frames) == 2 for d in kept) / len(kept)
    # 4-sigma bands around the exact probabilities
    assert abs(dropped - 0.05) < 4 * (0.05 * 0.95 / n) ** 0.5
    assert abs(text - 0.1) < 4 * (0.1 * 0.9 / n) ** 0.5
    # only the first frame: main is frame 0 (0.5 + 0.5/17) and no distinct second guide (0.5 + 0.5/17)
    p_first = (0.5 + 0.5 / frames) * (0.5 + 0.5 / frames)
    assert abs(first_only - p_first) < 4 * (p_first * (1 - p_first) / len(kept)) ** 0.5
    # two distinct guides: a second guide drawn (0.5) at a uniform frame other than the main one
    p_two = 0.5 * (1 - 1 / frames)
    assert abs(two - p_two) < 4 * (p_two * (1 - p_two) / len(kept)) ** 0.5


def test_policy_probabilities_are_configurable():
    gen = torch.Generator().manual_seed(1)
    always_last = TrainGuidePolicy(p_random_main=0.0, p_second=0.0, p_drop_guides=0.0, p_drop_text=1.0)
    draws = [always_last.draw(9, gen) for _ in range(50)]
    assert all(d.frames == (0,) and d.drop_text for d in draws)
