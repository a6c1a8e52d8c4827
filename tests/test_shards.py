"""Training from shards: rank x worker split, one shape per batch, exact resume, corrupt budget, train.py, and a
training step from shards equal to one from the generator on the same clips."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose, kill_when, list_files, read_checkpoint, run_entry
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from anisora.backbones import build_backbone
from anisora.config.errors import ConfigError
from anisora.data.clip_source import ClipFormat
from anisora.data.datamodule import ShardDataModule, clip_to_item, collate
from anisora.data.encode import EncodeSettings, encode_shards
from anisora.data.manifest import read_manifest
from anisora.data.shard_format import expand_urls, read_tar, write_tar
from anisora.data.shard_stream import ShardStream
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.data.synthetic_export import export_world
from anisora.diffusion.loss_weights import weighted_mse
from anisora.methods.base import DiffusionMethod, TrainBatch
from anisora.tasks.train import method_class

WORLD = WorldConfig(num_frames=5, height=16, width=16, sprite_size=6)
MODEL = [o for o in TINY if o.startswith("model.")]
STEPS = 12
COMMON = [*TINY, "data=shards", f"trainer.max_steps={STEPS}", "callbacks.checkpoint_every_n_steps=4",
          "trainer.log_every_n_steps=4", "optimizer.warmup_steps=4", "logger=none", "callbacks.sample_videos=false",
          "data.shuffle_buffer=8"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, list[str]]:
    """24 clips in 6 shards of 4 at 16x16, and the same clips at 8x8 in 3 shards (another latent shape)."""
    base = tmp_path_factory.mktemp("shards")
    manifest = export_world(base / "src", WORLD, seed=0, count=24, clips_per_file=8)
    backbone = build_backbone(OmegaConf.to_container(compose("encode", MODEL).model, resolve=True)).eval()
    records = list(read_manifest(manifest, kept_only=True))
    out = {}
    for name, size, count in (("big", 16, 24), ("small", 8, 12)):
        settings = EncodeSettings(ClipFormat(5, size, size), ("i2v", "flf2v"), torch.float32, 4, 2**30)
        encode_shards(backbone, records[:count], base / name, settings, show_progress=False)
        out[name] = sorted(str(p) for p in (base / name).glob("*.tar"))
    return out


def keys_of(batches) -> list[str]:
    return [f"{Path(s).parent.name}/{k}" for b in batches for k, s in zip(b["key"], b["shard"])]


def test_rank_by_worker_split_covers_every_sample_once(shards):
    urls = shards["big"] + shards["small"]
    seen: list[str] = []
    for rank in (0, 1):
        stream = ShardStream(urls, batch_size=3, seed=1, rank=rank, world_size=2, shuffle_buffer=5, epochs=1)
        for worker in (0, 1):
            batches = list(stream.batches(worker, 2))
            assert all(len({tuple(s.shape) for s in b["latents"]}) == 1 for b in batches)
            seen += keys_of(batches)
    assert len(seen) == 36 and len(set(seen)) == 36
    loader = DataLoader(ShardStream(urls, 3, seed=1, world_size=1, shuffle_buffer=5, epochs=1), batch_size=None,
                        num_workers=2)
    assert Counter(keys_of(loader)) == Counter(seen)  # the same samples through real worker processes


def test_batches_have_one_latent_shape_and_carry_the_stored_conditioning(shards):
    stream = ShardStream(shards["big"] + shards["small"], batch_size=4, seed=0, shuffle_buffer=8, epochs=1)
    shapes = Counter()
    for batch in stream:
        shapes[tuple(batch["latents"].shape)] += 1
        assert sorted(batch["guides"]) == ["flf2v", "i2v", "none"]
        assert batch["text"].shape[0] == batch["null_text"].shape[0] == len(batch["seed"]) == len(batch["caption"])
    assert shapes == {(4, 12, 2, 16, 16): 6, (4, 12, 2, 8, 8): 3}


def test_exact_resume_of_the_data_position(shards):
    def module(batches_seen: int) -> ShardDataModule:
        dm = ShardDataModule(shards["big"], WORLD, seed=3, batch_size=2, num_workers=2, shuffle_buffer=6)
        dm.load_state_dict({"batches_seen": batches_seen})
        return dm

    def take(dm: ShardDataModule, n: int) -> list[dict]:
        out = []
        for batch in dm.train_dataloader():
            out.append(batch)
            if len(out) == n:
                return out
        return out

    k, m = 5, 10  # past the end of the first pass (12 batches of 2), so the second pass's order is replayed too
    uninterrupted = take(module(0), k + m)
    resumed = take(module(k), m)
    assert keys_of(resumed) == keys_of(uninterrupted[k:])
    for a, b in zip(resumed, uninterrupted[k:]):
        assert a["seed"] == b["seed"] and torch.equal(a["latents"], b["latents"])
    assert keys_of(uninterrupted[:12]) != sorted(keys_of(uninterrupted[:12]))  # shuffled, not file order


def corrupt_copy(shard: str, out: Path, sample: int) -> str:
    """The shard with one sample's latents.pth overwritten by garbage (the tar itself stays valid)."""
    samples = list(read_tar(shard))
    key, fields = samples[sample]
    samples[sample] = (key, {**fields, "latents.pth": b"\x00garbage" * 64})
    write_tar(out, samples)
    return str(out)


def test_corrupt_samples_within_budget_are_skipped_and_counted(shards, tmp_path):
    bad = corrupt_copy(shards["big"][0], Path(shards["big"][0]).parent / "corrupt_a.tar", 1)
    urls = [bad, *shards["big"][1:]]
    dm = ShardDataModule(urls, WORLD, seed=0, batch_size=2, shuffle_buffer=4, max_corrupt=1)
    dm.stream = lambda start_batch=0, epochs=None, _s=dm.stream: _s(start_batch, epochs=1)  # one finite pass
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert sum(len(b["seed"]) for b in batches) == 23 and dm.corrupt_skipped == 1

    dm = ShardDataModule([bad, corrupt_copy(shards["big"][1], Path(bad).with_name("corrupt_b.tar"), 0)], WORLD, seed=0,
                         batch_size=2, max_corrupt=1)
    with pytest.raises(ConfigError) as err:
        for batch in dm.train_dataloader():
            dm.on_before_batch_transfer(batch, 0)
    message = str(err.value)
    assert message.startswith("data.max_corrupt: 2 unreadable samples exceed the budget of 1; the last: sample ")
    assert "corrupt_" in message and ".tar" in message and "\n" not in message


def test_bad_urls_fail_in_one_line(tmp_path, shards):
    with pytest.raises(ConfigError, match="data.urls: give shard files"):
        expand_urls(None)
    with pytest.raises(ConfigError, match=r"data.urls: '' expands to no files|data.urls: give shard files"):
        expand_urls([""])
    folder = Path(shards["big"][0]).parent
    assert expand_urls(f"{folder}/{{000000..000002}}.tar") == shards["big"][:3]
    out = run_entry("train.py", *COMMON, f"data.urls='{tmp_path}/{{000000..000003}}.tar'", log_dir=tmp_path / "logs")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"error: data.urls: shard {tmp_path}/000000.tar does not exist (and 3 more)"], out.stderr
    assert list_files(tmp_path / "logs") == []


@pytest.mark.slow
def test_train_from_shards_resumes_exactly(shards, tmp_path):
    urls = f"data.urls='{Path(shards['big'][0]).parent}/{{000000..000005}}.tar'"
    full = run_entry("train.py", *COMMON, urls, log_dir=tmp_path / "full", run_dir=tmp_path / "full" / "train" / "run")
    assert full.returncode == 0, full.stderr[-3000:]

    log_dir = tmp_path / "killed"
    run_dir = log_dir / "train" / "first"
    args = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", f"hydra.run.dir={run_dir}", *COMMON,
            urls]

    def mid_run() -> bool:  # last.ckpt is written after the step checkpoint it copies
        names = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
        return "last.ckpt" in names and bool(names & {"step000004.ckpt", "step000008.ckpt"})

    kill_when(args, mid_run, timeout=120)
    killed = [read_checkpoint(p)[0] for p in (run_dir / "checkpoints").glob("*.ckpt")]
    assert killed and max(killed) < STEPS, "the run was not interrupted"
    resumed = run_entry("train.py", *COMMON, urls, "ckpt_path=last", log_dir=log_dir,
                        run_dir=log_dir / "train" / "second")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step_full, a = read_checkpoint(tmp_path / "full" / "train" / "run" / "checkpoints" / "last.ckpt")
    step_resumed, b = read_checkpoint(log_dir / "train" / "second" / "checkpoints" / "last.ckpt")
    assert step_full == step_resumed == STEPS and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def tiny_method(*overrides: str) -> DiffusionMethod:
    """The method train.py builds for the tiny model (the weights the shards were encoded with), in-process."""
    cfg = compose("train", [*TINY, *overrides])
    part = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "guide", "optimizer", "sampler", "data")}
    return method_class(cfg.method)(**part, max_steps=STEPS, sequence_parallel=1, frozen_dtype="float32")


def loss_and_gradients(method: DiffusionMethod, inputs: TrainBatch, seeds: list[int]) -> tuple[float, dict]:
    """SFT's loss on `inputs` with noise levels and noise drawn from fresh generators of `seeds` (the two data
    paths spend different numbers of draws on their guide choice), and the gradient of every parameter."""
    inputs.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    method.zero_grad()
    terms = method.denoising_inputs(inputs)
    pred = method.backbone.denoise(terms["noisy"], terms["timestep"], method.with_text_gradients(inputs))
    loss = weighted_mse(pred.float(), terms["target"].float(), terms["weight"])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


# guide policy -> the stored guide modes a shard sample may draw from: first frame kept and text kept, or both
# dropped (the stored no-guide conditioning and null-text embedding against the pixel path's own encodings)
DRAWS = {"i2v": (["guide.p_drop_guides=0", "guide.p_drop_text=0"], ("i2v", "none")),
         "no_guide_no_text": (["guide.p_drop_guides=1", "guide.p_drop_text=1"], ("i2v", "flf2v", "none"))}


@pytest.mark.parametrize("draw", list(DRAWS))
def test_a_step_from_shards_equals_a_step_from_the_generator_on_the_same_clips(shards, draw):
    """What makes shards reach the generator's accuracy (benchmarks/shards_vs_synthetic.py, ~25 min): a step
    from a shard batch sees exactly the latents, text embeddings and guide conditioning the generator path
    computes from the same clips' pixels, so its loss and every gradient are the same."""
    overrides, modes = DRAWS[draw]
    method = tiny_method("guide.p_random_main=0", "guide.p_second=0", "guide.p_region=0", *overrides)
    dm = ShardDataModule(shards["big"], WORLD, seed=0, batch_size=4, shuffle_buffer=4)
    stored = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    stored["guides"] = {k: v for k, v in stored["guides"].items() if k in modes}
    records = list(read_manifest(Path(shards["big"][0]).parents[1] / "src" / "manifest.jsonl", kept_only=True))
    indices = [int(records[int(key)].scores["synthetic_index"]) for key in stored["key"]]
    pixels = collate([clip_to_item(make_clip(WORLD, 0, "train", i), i, 0) for i in indices])
    from_shards, from_pixels = method.prepare_batch(stored), method.prepare_batch(pixels)

    assert from_shards.captions == from_pixels.captions
    assert all(from_shards.captions) if draw == "i2v" else set(from_shards.captions) == {""}
    for name in ("x0", "slots"):
        assert torch.equal(getattr(from_shards, name), getattr(from_pixels, name)), name
    for name in ("text", "guide"):
        assert torch.equal(getattr(from_shards.cond, name), getattr(from_pixels.cond, name)), name
    assert from_shards.slots.any() == (draw == "i2v")  # the i2v draw really guides frame 0
    loss, grads = loss_and_gradients(method, from_shards, stored["seed"])
    reference_loss, reference = loss_and_gradients(method, from_pixels, stored["seed"])
    assert loss == reference_loss and grads.keys() == reference.keys() and len(grads) > 10
    for name, grad in grads.items():
        assert torch.equal(grad, reference[name]), name
