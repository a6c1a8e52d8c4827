"""infer.py on a diffusers-format model folder: `python infer.py model=wan14b ckpt=DIR` as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import list_files, run_entry
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
from PIL import Image
from test_wan_parity import tiny_parts

SMALL = ["accelerator=cpu", "size.num_frames=9", "size.height=32", "size.width=32", "sampler.num_steps=2",
         "model.max_sequence_length=16", "prompt=a red slime moves left across the meadow"]


@pytest.fixture(scope="module")
def wan_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    WanImageToVideoPipeline(scheduler=scheduler, **tiny_parts("i2v")).save_pretrained(root / "i2v")
    WanPipeline(scheduler=scheduler, **tiny_parts("t2v")).save_pretrained(root / "t2v")
    image = root / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    return root


def our_frames(run_dir: Path) -> tuple[np.ndarray, dict]:
    """infer.py's lossless frames of clip 0 (uint8) and its samples.json record."""
    frames = sorted((run_dir / "frames" / "clip00").glob("frame_*.png"))
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames]), \
        json.loads((run_dir / "samples.json").read_text())[0]


def stock_frames(pipeline, record: dict, **inputs) -> np.ndarray:
    """The stock diffusers pipeline on the same folder, prompt, seed, size, steps and CFG (Wan's sampler:
    UniPC, shift 3 from the folder's scheduler, CFG 5 at every step), quantised as infer.py writes frames."""
    out = pipeline(prompt=record["prompt"], negative_prompt="", height=32, width=32, num_frames=9,
                   num_inference_steps=2, guidance_scale=5.0, max_sequence_length=16,
                   generator=torch.Generator().manual_seed(record["seed"]), output_type="np", **inputs).frames[0]
    return np.round(np.clip(out, 0, 1) * 255).astype(np.int16)


def test_infer_wan14b_folder_matches_the_stock_pipeline(tmp_path, wan_folders):
    run_dir = tmp_path / "run"
    result = run_entry("infer.py", "model=wan14b", f"ckpt={wan_folders / 'i2v'}",
                       f"guide.frames=[{wan_folders / 'first.png'}]", "out.frames=png", *SMALL,
                       log_dir=tmp_path / "outputs", run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "videos" / "clip00.mp4").is_file()
    assert "dit" in result.stdout + result.stderr  # parameter counts are printed at start
    mine, record = our_frames(run_dir)
    pipe = WanImageToVideoPipeline.from_pretrained(wan_folders / "i2v")
    theirs = stock_frames(pipe, record, image=Image.open(wan_folders / "first.png").convert("RGB"))
    assert mine.shape == theirs.shape == (9, 32, 32, 3)
    assert np.abs(mine.astype(np.int16) - theirs).max() <= 1  # equal up to rounding at quantisation


def test_infer_wan13b_text_to_video_matches_the_stock_pipeline(tmp_path, wan_folders):
    run_dir = tmp_path / "run"
    result = run_entry("infer.py", "model=wan1.3b", f"ckpt={wan_folders / 't2v'}", "out.frames=png", *SMALL,
                       log_dir=tmp_path / "outputs", run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "videos" / "clip00.mp4").is_file()
    mine, record = our_frames(run_dir)
    theirs = stock_frames(WanPipeline.from_pretrained(wan_folders / "t2v"), record)
    assert mine.shape == theirs.shape and np.abs(mine.astype(np.int16) - theirs).max() <= 1


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=tiny"], "is a model folder; name its family, e.g. model=wan14b"),
        (["model=wan14b"], "error: guide.frames: an image-to-video model needs guide images"),
        pytest.param(["model=wan14b", "size.num_frames=8", "guide.frames=[FIRST]"],
                     "error: size.num_frames: must be 4n+1", marks=pytest.mark.slow),
        pytest.param(["model=wan14b", "size.height=40", "guide.frames=[FIRST]"],
                     "error: size.height: must be a positive multiple", marks=pytest.mark.slow),
    ],
)
def test_bad_folder_requests_fail_before_loading(tmp_path, wan_folders, overrides, expected):
    overrides = [o.replace("FIRST", str(wan_folders / "first.png")) for o in overrides]
    result = run_entry("infer.py", *SMALL, f"ckpt={wan_folders / 'i2v'}", *overrides, log_dir=tmp_path / "outputs")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert expected in result.stderr
    assert list_files(tmp_path / "outputs") == []


def test_folder_without_vae_fails_at_once_naming_it(tmp_path, wan_folders):
    broken = tmp_path / "broken"
    shutil.copytree(wan_folders / "i2v", broken)
    shutil.rmtree(broken / "vae")
    result = run_entry("infer.py", "model=wan14b", f"ckpt={broken}", f"guide.frames=[{wan_folders / 'first.png'}]",
                       *SMALL, log_dir=tmp_path / "outputs")
    assert result.returncode == 2
    assert f"error: ckpt: {broken / 'vae'} is missing" in result.stderr
    assert list_files(tmp_path / "outputs") == []


def test_infer_cogvideox5b_folder_matches_the_stock_pipeline(tmp_path, wan_folders):
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )
    from test_cogvideox import TINY, save_folder
    from transformers import AutoTokenizer, T5EncoderModel

    from anisora.backbones.cogvideox import CogVideoXSpec, build_random_cogvideox

    folder = tmp_path / "cogvideox"
    save_folder(build_random_cogvideox(CogVideoXSpec(**TINY)), folder)
    common = ["model=cogvideox5b", f"ckpt={folder}", "accelerator=cpu", "size.num_frames=9", "size.height=32",
              "size.width=32", "sampler.num_steps=2", "model.max_sequence_length=16",
              "prompt=a red slime moves left across the meadow"]
    run_dir = tmp_path / "outputs" / "run"
    image = wan_folders / "first.png"
    # the stock pipeline encodes the negative prompt "" (AniSora V1's default: zero embeddings)
    result = run_entry("infer.py", *common, f"guide.frames=[{image}]", "out.frames=png", "model.empty_prompt=encode",
                       log_dir=tmp_path / "outputs", run_dir=run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "videos" / "clip00.mp4").is_file()
    mine, record = our_frames(run_dir)
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder"),
        vae=AutoencoderKLCogVideoX.from_pretrained(folder / "vae"),
        transformer=CogVideoXTransformer3DModel.from_pretrained(folder / "transformer"),
        scheduler=CogVideoXDPMScheduler.from_pretrained(folder / "scheduler"))  # sampler=cogvideox_dpm
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image=Image.open(image).convert("RGB"), prompt=record["prompt"], negative_prompt="", height=32,
               width=32, num_frames=9, num_inference_steps=2, guidance_scale=6.0, use_dynamic_cfg=True,
               max_sequence_length=16, generator=torch.Generator().manual_seed(record["seed"]),
               output_type="np").frames[0]
    theirs = np.round(np.clip(out, 0, 1) * 255).astype(np.int16)
    assert mine.shape == theirs.shape == (9, 32, 32, 3)
    assert np.abs(mine.astype(np.int16) - theirs).max() <= 1  # equal up to rounding at quantisation
    # two guides in one latent frame cannot both be encoded one at a time into their slots
    clash = run_entry("infer.py", *common, "guide=keyframes", f"guide.frames=[{{image: {image}, at: 5}}, "
                      f"{{image: {image}, at: 8}}]", log_dir=tmp_path / "clash")
    assert clash.returncode == 2
    assert "error: guide.indices: frames 5 and 8 fall in the same latent frame 2" in clash.stderr
