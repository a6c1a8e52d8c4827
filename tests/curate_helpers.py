"""Shared by the curation tests: the test corpus and running `anisora-data curate` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from anisora.data.curation.corpus import ShotPlan, render_shot

ROOT = Path(__file__).resolve().parents[1]


def curate_cli(*overrides: str, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "anisora.tasks.data_cli", "curate", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **popen)


def write_animation(path: Path, fps: int = 10) -> list[int]:
    """A two-shot animated gif/webp (Pillow); returns the true cut."""
    first = render_shot(ShotPlan(seed=11, frames=25, hue=0.05, kind="normal"), 96, 128)
    second = render_shot(ShotPlan(seed=12, frames=25, hue=0.55, kind="normal"), 96, 128)
    frames = [Image.fromarray(f) for f in np.concatenate([first, second])]
    extra = {"lossless": True} if path.suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0, **extra)
    return [25]


def curate_config(*overrides: str):
    """conf/curate.yaml composed in-process as the CLI would, without Hydra's own node."""
    from conftest import task_config

    return task_config("curate", list(overrides))
