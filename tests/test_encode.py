"""anisora-data encode: lossless synthetic sources, shard contents, rank split, kill-and-rerun byte identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, kill_when
from omegaconf import OmegaConf

from anisora.backbones import build_backbone
from anisora.data.clip_source import ClipFormat, SourceReader
from anisora.data.encode import EncodeSettings, encode_shards
from anisora.data.manifest import read_manifest
from anisora.data.shard_format import NULL_TEXT, decode_sample, load_tensor, read_tar
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.data.synthetic_export import export_world, write_lossless
from anisora.guidance.pair import pair_from_video
from anisora.inference.video_io import read_video

WORLD = WorldConfig(num_frames=5, height=16, width=16, sprite_size=6)
MODEL = ["model.num_layers=1", "model.num_attention_heads=2", "model.attention_head_dim=8", "model.ffn_dim=32",
         "model.text_dim=16", "model.text_layers=1", "model.text_heads=2"]
SETTINGS = EncodeSettings(ClipFormat(5, 16, 16), ("i2v", "flf2v"), torch.float32, max_samples=4, max_bytes=2**30)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return export_world(tmp_path_factory.mktemp("src"), WORLD, seed=0, count=10, clips_per_file=4)


@pytest.fixture(scope="module")
def backbone():
    model = OmegaConf.to_container(compose("encode", MODEL).model, resolve=True)
    return build_backbone(model).eval()


def samples_of(folder: Path) -> dict[str, dict]:
    return {key: decode_sample(fields) for tar in sorted(folder.glob("*.tar")) for key, fields in read_tar(str(tar))}


def test_lossless_export_round_trips_every_frame(source, tmp_path):
    records = list(read_manifest(source))
    assert len(records) == 10 and all(r.keep and r.caption for r in records)
    reader = SourceReader()
    for i, record in enumerate(records):
        clip = make_clip(WORLD, 0, "train", i)
        assert record.caption == clip.caption
        assert np.array_equal(reader.frames(record, ClipFormat(5, 16, 16)), clip.video)
    noise = np.random.default_rng(0).integers(0, 256, (7, 18, 22, 3), dtype=np.uint8)  # odd sizes, every value
    assert np.array_equal(read_video(write_lossless(tmp_path / "noise.mkv", noise, fps=8)), noise)


def test_resampling_and_centre_crop(source):
    record = next(read_manifest(source))
    reader = SourceReader()
    frames = reader.frames(record, ClipFormat(3, 8, 8, fps=4.0))  # every other source frame, 16x16 -> 8x8
    assert frames.shape == (3, 8, 8, 3)
    full = make_clip(WORLD, 0, "train", 0).video.astype(np.float32)
    pooled = full[[0, 2, 4]].reshape(3, 8, 2, 8, 2, 3).mean(axis=(2, 4))
    assert np.abs(frames.astype(np.float32) - pooled).max() <= 1.0


def test_shards_hold_the_backbone_encodings_and_meta(source, backbone, tmp_path):
    records = list(read_manifest(source))
    info = encode_shards(backbone, records, tmp_path, SETTINGS, show_progress=False)
    assert info["num_shards"] == 3 and info["samples"] == 10 and info["guides"] == ["none", "i2v", "flf2v"]
    samples = samples_of(tmp_path)
    assert sorted(samples) == [f"{i:09d}" for i in range(10)]
    for i, record in enumerate(records):
        sample = samples[f"{i:09d}"]
        video = torch.from_numpy(make_clip(WORLD, 0, "train", i).video).permute(3, 0, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            assert torch.equal(sample["latents"], backbone.encode_video(video[None])[0])
            g, m = pair_from_video(video, [0, 4])
            assert torch.equal(sample["guides"]["flf2v"], backbone.condition(g[None], m[None])[0])
            assert torch.allclose(sample["text"], backbone.encode_prompt([record.caption])[0], atol=1e-5)
        meta = sample["meta"]
        assert meta["caption"] == record.caption and meta["id"] == record.id and meta["source"] == record.source
        assert (meta["num_frames"], meta["height"], meta["width"], meta["fps"]) == (5, 16, 16, 8.0)
        assert meta["scores"]["synthetic_index"] == i and meta["latent_shape"] == list(sample["latents"].shape)
    with torch.no_grad():
        assert torch.allclose(load_tensor((tmp_path / NULL_TEXT).read_bytes()), backbone.encode_prompt([""])[0])
    assert json.loads((tmp_path / "dataset.json").read_text())["latent_shape"] == [12, 2, 16, 16]


def test_two_ranks_cover_every_clip_once(source, backbone, tmp_path):
    records = list(read_manifest(source))
    for rank in (0, 1):
        encode_shards(backbone, records, tmp_path, SETTINGS, rank=rank, world_size=2, show_progress=False)
        if rank == 0:
            assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["000000.tar", "000002.tar"]
    ids = [s["meta"]["id"] for s in samples_of(tmp_path).values()]
    assert sorted(ids) == sorted(r.id for r in records) and len(set(ids)) == len(ids)
    assert json.loads((tmp_path / "dataset.json").read_text())["shards_complete"] == 3


def encode_cli(manifest: Path, out: Path, logs: Path) -> list[str]:
    return [sys.executable, "-m", "anisora.tasks.data_cli", "encode", f"manifest={manifest}", f"out={out}",
            "accelerator=cpu", "shard_max_samples=2", "progress=false", f"paths.log_dir={logs}", *MODEL]


@pytest.mark.slow
def test_killed_encode_reruns_to_byte_identical_shards(backbone, tmp_path):
    manifest = export_world(tmp_path / "src", WORLD, seed=0, count=80, clips_per_file=16)
    model = OmegaConf.to_container(compose("encode", MODEL).model, resolve=True)
    settings = EncodeSettings(ClipFormat(5, 16, 16), ("i2v", "flf2v"), torch.float32, max_samples=2, max_bytes=2**30)
    encode_shards(backbone, list(read_manifest(manifest, kept_only=True)), tmp_path / "full", settings,
                  model_config=model, show_progress=False)  # the uninterrupted run, in-process

    out = tmp_path / "killed"
    kill_when(encode_cli(manifest, out, tmp_path / "logs"), lambda: bool(list(out.glob("*.json"))), timeout=120)
    done = {p.name: p.stat().st_ino for p in out.glob("*.tar") if p.with_suffix(".json").is_file()}
    assert 0 < len(done) < 40, "the encode was not interrupted part-way"

    again = subprocess.run(encode_cli(manifest, out, tmp_path / "logs"), cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {n: (out / n).stat().st_ino for n in done} == done  # complete shards were skipped, not rewritten
    names = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert names == sorted(p.name for p in out.iterdir()) and len([n for n in names if n.endswith(".tar")]) == 40
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_missing_manifest_is_one_line_before_any_model(tmp_path):
    result = subprocess.run(encode_cli(tmp_path / "no" / "manifest.jsonl", tmp_path / "out", tmp_path / "logs"),
                            cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: manifest: {tmp_path / 'no' / 'manifest.jsonl'} does not exist (expected a "
                     "manifest.jsonl from anisora-data curate)"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


def test_writing_tensor_shards_needs_no_video_decoder():
    """The encoder's tensor path (benchmarks' random shards, pre-encoded latents) imports without PyAV: the
    decoder is imported only where a clip is read from a video file."""
    code = "import sys; sys.modules['av'] = None; import anisora.data.encode; import anisora.tasks.train"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
