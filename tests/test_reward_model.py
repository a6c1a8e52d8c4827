"""method=reward_model: the pairwise and regression losses on hand-computed cases, Spearman and pair accuracy, the
reward data file (groups, pairs from scores and pair rows, one-line refusals), and train.py -> checkpoint ->
`reward=learned` scorer on tiny random CLIP towers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import task_config

from anisora.config.errors import ConfigError
from anisora.data.reward_clips import group_pairs, read_reward_data
from anisora.data.reward_world import DIMENSIONS, write_reward_world
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.methods.reward_losses import (
    bradley_terry_loss,
    bradley_terry_ties_loss,
    pair_accuracy,
    pair_loss,
    ranks,
    regression_loss,
    spearman,
)
from anisora.rewards import build_scorer
from anisora.rewards.base import Clip
from anisora.rewards.towers import write_tiny_clip


def test_bradley_terry_and_its_tie_form_match_hand_computed_values():
    zero, ln5 = torch.tensor([0.0]), torch.tensor([math.log(5.0)])
    assert float(bradley_terry_loss(zero)) == pytest.approx(math.log(2.0))
    no_tie, tie = torch.tensor([False]), torch.tensor([True])
    # a preference at delta 0: -log sigmoid(-ln 5) = ln 6; at delta = ln 5: ln 2
    assert float(bradley_terry_ties_loss(zero, no_tie)) == pytest.approx(math.log(6.0))
    assert float(bradley_terry_ties_loss(ln5, no_tie)) == pytest.approx(math.log(2.0))
    # a tie is best at delta 0, where it costs ln((k+1)/(k-1)) = ln 1.5, and symmetric in delta
    assert float(bradley_terry_ties_loss(zero, tie)) == pytest.approx(math.log(1.5))
    assert float(bradley_terry_ties_loss(ln5, tie)) == pytest.approx(float(bradley_terry_ties_loss(-ln5, tie)))
    assert float(bradley_terry_ties_loss(ln5, tie)) > math.log(1.5)
    deltas, ties = torch.tensor([0.0, 1.0]), torch.tensor([True, False])
    assert float(pair_loss(deltas, ties, "bt")) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    target = torch.tensor([[1.0, math.nan], [3.0, 0.0]])
    assert float(regression_loss(torch.zeros(2, 2), target)) == pytest.approx((1 + 9 + 0) / 3)


def test_spearman_uses_average_ranks_and_pair_accuracy_skips_ties():
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 45])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]: rho = 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([0.1, 0.5, 0.5, 0.9]), np.array([1.0, 2.0, 3.0, 4.0])) == \
        pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert math.isnan(spearman(np.ones(3), np.arange(3)))
    assert pair_accuracy(np.array([1.0, -1.0, 2.0, -5.0]), np.array([False, False, False, True])) == \
        pytest.approx(2 / 3)
    assert pair_accuracy(np.array([1.0, 0.0, -1.0]), np.array([False, False, False])) == pytest.approx(1.5 / 3)


def test_regression_is_censored_where_the_score_sits_at_an_end_of_its_range():
    high, low = torch.tensor([1.0]), torch.tensor([0.0])
    target = torch.tensor([[1.0], [1.0], [0.5], [0.0]])
    pred = torch.tensor([[1.5], [0.5], [1.5], [-1.0]], requires_grad=True)
    loss = regression_loss(pred, target, low, high)
    # past the top for a clip at the top, past the bottom for one at the bottom: free; the rest as MSE
    assert loss.item() == pytest.approx((0.0 + 0.25 + 1.0 + 0.0) / 4)
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([0.0, -0.25, 0.5, 0.0])


def write_rows(tmp_path, rows):
    for row in rows:
        if "video" in row:
            np.save(tmp_path / row["video"], np.zeros((3, 8, 8, 3), np.uint8))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_groups_join_pair_rows_and_pairs_come_from_scores(tmp_path):
    path = write_rows(tmp_path, [
        {"id": "a", "video": "a.npy", "group": "g", "scores": {"q": 0.9}},
        {"id": "b", "video": "b.npy", "group": "g", "scores": {"q": 0.2}},
        {"id": "c", "video": "c.npy", "scores": {"q": 0.25}},
        {"id": "d", "video": "d.npy"},
        {"pair": ["c", "d"], "preferred": {"q": "b"}},
    ])
    data = read_reward_data(path, "method.train_data")
    assert sorted(sorted(g) for g in data.groups()) == [[0, 1], [2, 3]]
    assert data.pairs == [(2, 3, "q", 1)]
    scores = np.array([[0.9], [0.2], [0.25]])
    assert group_pairs(scores, 0.0) == [(0, 1, 0, False), (0, 2, 0, False), (2, 1, 0, False)]
    assert group_pairs(scores, 0.1)[2] == (1, 2, 0, True)  # 0.2 and 0.25 tie within the margin


def test_bad_reward_data_fails_in_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"video": "missing.npy"}) + "\n")
    with pytest.raises(ConfigError, match="method.train_data: .*video .*missing.npy"):
        read_reward_data(tmp_path / "bad.jsonl", "method.train_data")
    with pytest.raises(ConfigError, match="pair must name two clip ids"):
        read_reward_data(write_rows(tmp_path, [{"id": "a", "video": "a.npy"}, {"pair": ["a", "zz"]}]), "k")


def test_train_py_fits_a_reward_model_whose_checkpoint_is_the_learned_scorer(tmp_path):
    from anisora.tasks import train

    world = WorldConfig(num_frames=9)
    train_file = write_reward_world(tmp_path / "data", world, 0, 3)
    towers = write_tiny_clip(tmp_path / "clip", width=16, layers=1)
    run_dir = tmp_path / "outputs" / "train" / "run"
    overrides = ["method=reward_model", f"method.vision={towers}", f"method.train_data={train_file}",
                 f"method.dimensions=[{','.join(DIMENSIONS)}]", "method.hidden=16", "method.num_frames=4",
                 "method.val_fraction=0.34", "method.batch_groups=2", "trainer.max_steps=3",
                 "trainer.val_every_n_steps=3", "optimizer.warmup_steps=1", "logger=none", "accelerator=cpu",
                 "callbacks.progress_bar=none", f"paths.log_dir={tmp_path / 'outputs'}",
                 f"paths.output_dir={run_dir}"]
    metrics = train.run(task_config("train", overrides))
    assert math.isfinite(metrics) and metrics > 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    (towers / "config.json").unlink()  # the checkpoint alone rebuilds the towers and the tokenizer

    scorer = build_scorer({"name": "learned", "ckpt": str(ckpt), "accelerator": "cpu"})
    assert scorer.dimensions == DIMENSIONS
    clip = make_clip(world, 0, "val", 0)
    guided = Clip(name="g", frames=clip.video, prompt=clip.caption, guide_indices=[0], guide_frames=clip.video[:1])
    plain = Clip(name="p", frames=clip.video[:5])
    first, second = scorer.score([guided, plain])
    assert set(first) == set(DIMENSIONS) and all(math.isfinite(v) for v in [*first.values(), *second.values()])
    assert first != second and scorer.score([guided])[0] == pytest.approx(first)
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    for d in DIMENSIONS:  # predictions stay inside the range the training scores spanned
        seen = [r["scores"][d] for r in rows if r["scores"][d] is not None]
        assert min(seen) - 1e-4 <= first[d] <= max(seen) + 1e-4 and min(seen) - 1e-4 <= second[d] <= max(seen) + 1e-4


def test_reward_predictions_are_clamped_to_the_training_range():
    from pathlib import Path

    from anisora.data.reward_clips import RewardClip, RewardData, score_range
    from anisora.rewards.reward_net import RewardNet

    clips = [RewardClip(Path(f"{i}.npy"), scores=s) for i, s in enumerate(
        [{"colour_consistency": 0.25}, {"colour_consistency": 1.0}, {}])]
    low, high = score_range(RewardData(clips, []), ["colour_consistency", "speed_score"])
    assert low == [0.25, -math.inf] and high == [1.0, math.inf]
    net = RewardNet.__new__(RewardNet)
    torch.nn.Module.__init__(net)
    for name, value in [("score_mean", [0.5, 0.5]), ("score_std", [1.0, 1.0]), ("score_min", low), ("score_max", high)]:
        net.register_buffer(name, torch.tensor(value))
    out = net.scores(torch.tensor([[2.0, 2.0], [-2.0, -2.0], [0.1, 0.1]]))
    assert out.flatten().tolist() == pytest.approx([1.0, 2.5, 0.25, -1.5, 0.6, 0.6])


def test_the_motion_stream_reads_each_frame_pairs_mean_absolute_pixel_change():
    from anisora.rewards.reward_net import pixel_changes

    frames = torch.rand(1, 1, 3, 8, 8).repeat(2, 4, 1, 1, 1)  # two still clips of four frames
    frames[1, 2:] += 0.25  # the second brightens by 0.25 from its third frame on
    frames[1, :, :, 0, 0] = torch.tensor([0.0, 0.5, 0.25, 0.25])[:, None]  # and one pixel changes on its own
    changes = pixel_changes(frames)
    assert changes[0].tolist() == [0.0, 0.0, 0.0]
    assert changes[1].tolist() == pytest.approx([0.5 / 64, 0.25, 0.0])  # one pixel of 64; every pixel; none


def test_reward_model_settings_and_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    from anisora.tasks import train

    for extra, key in ((["method.train_data=null"], "method.train_data"),
                       (["method.train_data=x.jsonl", "method.pair_loss=hinge"], "method.pair_loss"),
                       (["method.train_data=x.jsonl"], "method.train_data")):
        cfg = task_config("train", ["method=reward_model", "logger=none", f"paths.log_dir={tmp_path}",
                                    f"paths.output_dir={tmp_path / 'run'}", *extra])
        with pytest.raises(SystemExit):
            train.run(cfg)
        assert capsys.readouterr().err.startswith(f"error: {key}: ")
        assert not (tmp_path / "run" / "checkpoints").exists()
    torch.save({"state_dict": {}}, tmp_path / "diffusion.ckpt")
    with pytest.raises(ConfigError, match="reward.ckpt: .*not a reward model"):
        build_scorer({"name": "learned", "ckpt": str(tmp_path / "diffusion.ckpt")})
    with pytest.raises(ConfigError, match="reward.ckpt: .*does not exist"):
        build_scorer({"name": "learned", "ckpt": str(tmp_path / "none.ckpt")})
