"""Every guide mode is one (G, M) pair: spec parsing, checks with one-line errors, masks, slots, captions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anisora.config.errors import ConfigError
from anisora.data.captions import caption_with_scores, scores_of
from anisora.guidance.fold import latent_slot_mask
from anisora.guidance.policy import TrainGuidePolicy
from anisora.guidance.spec import (
    GuideSpec,
    binary_mask,
    build_pair,
    check_one_guide_per_slot,
    guide_spec,
    latent_slot,
)

F, H, W = 9, 4, 4


def spec(**guide):
    return guide_spec({"mode": "i2v", "indices": [0], "frames": [], **guide}, F)


@pytest.mark.parametrize(
    ("guide", "indices"),
    [
        ({"mode": "i2v", "indices": [0]}, (0,)),
        ({"mode": "last", "indices": [-1]}, (8,)),
        ({"mode": "flf2v", "indices": [0, -1]}, (0, 8)),
        ({"mode": "mid", "indices": [0, "mid", -1]}, (0, 4, 8)),
        ({"mode": "keyframes", "indices": [], "frames": []} | {"indices": [0, 3, -2]}, (0, 3, 7)),
    ],
)
def test_modes_resolve_to_frame_indices(guide, indices):
    assert spec(**guide).indices == indices


def test_keyframes_take_image_and_index_pairs(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    s = spec(mode="keyframes", indices=[], frames=[{"image": str(a), "at": 0}, {"image": str(b), "at": -1}])
    assert s.indices == (0, 8) and s.images == (str(a), str(b))


@pytest.mark.parametrize(
    ("guide", "message"),
    [
        ({"indices": [9]}, "guide.indices[0]: frame index 9 is outside a clip of 9 frames"),
        ({"indices": [0, -9]}, "guide.indices[1]: -9 is frame 0, already given by guide.indices[0]"),
        ({"indices": ["middle"]}, "guide.indices[0]: expected a frame index or 'mid', got 'middle'"),
        ({"mode": "keyframes", "indices": []}, "guide.frames: guide=keyframes needs frames"),
        ({"mode": "region"}, "guide.mask: guide=region needs a mask"),
        ({"mode": "video", "indices": []}, "guide.video: guide=video needs a guide video"),
        ({"frames": ["a.png", "b.png"]}, "guide.frames: 2 images for 1 guide.indices"),
        ({"frames": [{"image": "a.png"}]}, "guide.frames[0]: a keyframe needs `image` and `at`"),
        ({"mask": "/no/mask.png"}, "guide.mask: /no/mask.png does not exist"),
    ],
)
def test_invalid_specs_fail_with_one_line_naming_the_key(guide, message):
    with pytest.raises(ConfigError) as err:
        spec(**guide)
    assert str(err.value) == message or str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_one_guide_per_latent_slot_names_the_colliding_frames():
    assert [latent_slot(f, 4) for f in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    check_one_guide_per_slot([0, 4, 8], 4)  # slots 0, 1, 2
    with pytest.raises(ConfigError, match=r"guide.indices: frames 5 and 8 fall in the same latent frame 2"):
        check_one_guide_per_slot([0, 5, 8], 4)


def test_latent_slot_mask_marks_the_slot_of_each_guided_frame():
    mask = torch.zeros(1, 9, 2, 2)
    mask[0, 0] = 1  # slot 0
    mask[0, 6, 0, 0] = 1  # slot 2, one cell
    slots = latent_slot_mask(mask, 4, 2, 2)
    assert slots.shape == (1, 1, 3, 2, 2)
    assert slots[0, 0, 0].eq(1).all() and slots[0, 0, 1].eq(0).all()
    assert slots[0, 0, 2].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def load_images(table):
    return lambda path: table[path]


def test_region_mask_keeps_only_the_white_part_of_the_guided_frame():
    image = np.full((H, W, 3), 255, np.uint8)
    mask = np.zeros((H, W, 3), np.uint8)
    mask[:, :2] = 255
    s = GuideSpec((0,), ("img",), mask="mask")
    g, m = build_pair(s, F, H, W, load_images({"img": image, "mask": mask}), None)
    assert m[0].tolist() == [[1.0, 1.0, 0.0, 0.0]] * H and m[1:].eq(0).all()
    assert g[:, 0, :, :2].eq(1).all() and g[:, 0, :, 2:].eq(0).all()


def test_mask_video_and_guide_video_set_the_pair_frame_by_frame():
    video = np.random.default_rng(0).integers(0, 256, (F, H, W, 3), dtype=np.uint8)
    masks = np.zeros((F, H, W, 3), np.uint8)
    masks[3, 1:3, 1:3] = 255
    videos = {"clip": video, "masks": masks}
    g, m = build_pair(GuideSpec((), (), video="clip", mask_video="masks"), F, H, W, None, videos.__getitem__)
    assert m.sum() == 4 and m[3, 1:3, 1:3].eq(1).all()
    expected = torch.from_numpy(video[3, 1:3, 1:3]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(g[:, 3, 1:3, 1:3], expected)
    g, m = build_pair(GuideSpec((), (), video="clip"), F, H, W, None, videos.__getitem__)
    assert m.eq(1).all()  # a guide video with no frame list and no mask: every pixel given


def test_grey_masks_are_refused():
    grey = np.full((H, W), 128, np.uint8)
    with pytest.raises(ConfigError, match="guide.mask: not a black/white mask: 100% of its pixels are grey"):
        binary_mask(grey, "guide.mask")
    assert binary_mask(np.array([[0, 255]], np.uint8), "guide.mask").tolist() == [[False, True]]


def test_region_draw_frequency_matches_its_probability():
    policy = TrainGuidePolicy(p_region=0.3)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    draws = [policy.draw(17, gen) for _ in range(n)]
    kept = [d for d in draws if d.frames]
    share = sum(d.region is not None for d in kept) / len(kept)
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / len(kept)) ** 0.5
    for d in kept:
        if d.region is not None:
            x0, y0, x1, y1 = d.region
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and x1 - x0 >= 0.3 - 1e-9


def test_scores_are_set_in_the_caption_suffix():
    caption = "a red slime moves left across the meadow. aesthetic score: 5.5. motion score: 2.0."
    assert scores_of(caption) == (5.5, 2.0)
    assert caption_with_scores(caption, motion=3) == caption.replace("motion score: 2.0", "motion score: 3.0")
    assert caption_with_scores("a girl waves", motion=1.5) == "a girl waves. aesthetic score: 5.5. motion score: 1.5."
    assert caption_with_scores(caption) == caption
