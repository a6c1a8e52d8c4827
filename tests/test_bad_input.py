"""Bad input: one line naming the key or path, exit code 2, nothing written."""

from __future__ import annotations

import pytest
from conftest import TINY, list_files, run_entry


@pytest.mark.parametrize(
    ("script", "overrides", "expected"),
    [
        ("train.py", ["trainer.max_stepz=3"], "error: trainer.max_stepz: unknown config key; allowed in 'trainer': "
                                              "accumulate_grad_batches, activation_checkpointing, checkpoint_fraction, "
                                              "deterministic"),
        ("train.py", ["trainer.max_steps=abc"], "error: trainer.max_steps: Value 'abc' of type 'str' could not be"),
        ("train.py", ["model=wan99"],
         "error: model=wan99: no such option; available: cogvideox5b, tiny, tiny_cogvideox, wan1.3b, wan14b, "
         "wan14b_720p"),
        ("train.py", ["sampler.name=ddim"],
         "error: sampler.name: expected one of euler, unipc, flow_sde, euler_renoise, cogvideox_dpm, cogvideox_ddim; "
         "got 'ddim'"),
        ("train.py", ["optimizer.lr=-1"], "error: optimizer.lr: must be >= 0.0; got -1.0"),
        ("train.py", ["model.objective.timestep_sampling=bad"],
         "error: model.objective.timestep_sampling: expected one of uniform, logit_normal; got 'bad'"),
        ("train.py", ["data.num_frames=8"], "error: data.num_frames: must be 4n+1 (e.g. 5, 17), got 8"),
        ("train.py", ["data.height=15"], "error: data.height: must be a positive multiple of 2"),
        ("train.py", ["ckpt_path=/no/such/run.ckpt"], "error: ckpt_path: checkpoint /no/such/run.ckpt does not exist"),
        ("train.py", ["ckpt_path=last"], "error: ckpt_path: last: no checkpoints/last.ckpt of a diffusion model under"),
        ("infer.py", ["ckpt=/no/such/run.ckpt"], "error: ckpt: checkpoint /no/such/run.ckpt does not exist"),
        ("infer.py", ["guide.frames=[/no/such/first.png]", "prompt=x"],
         "error: guide.frames: guide image /no/such/first.png does not exist"),
        ("evaluate.py", ["videos=/no/such/folder"], "error: videos: folder /no/such/folder does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, script, overrides, expected):
    log_dir = tmp_path / "outputs"
    result = run_entry(script, *overrides, *(TINY if script == "train.py" else []), log_dir=log_dir)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(expected), result.stderr
    assert list_files(log_dir) == [] and not log_dir.exists()
