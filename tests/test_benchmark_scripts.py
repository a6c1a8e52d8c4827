"""The GPU benchmark scripts run end to end at toy sizes on the CPU (`--smoke`), so a change to the code
they drive cannot silently break them between device runs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def run_script(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_train_throughput_smoke_times_ours_and_stock_and_counts_flops(tmp_path):
    done = run_script(["benchmarks/train_throughput.py", "--smoke", "--steps", "1", "--warmup", "1",
                       "--runs", "wan1.3b_ops", "wan14b_lora", "stock_wan1.3b_gc", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("wan1.3b_ops", "wan14b_lora", "stock_wan1.3b_gc"):
        row = json.loads((tmp_path / f"train_{name}.json").read_text())
        assert "error" not in row, row
        assert row["timed_steps"] >= 1 and row["step_s"] > 0 and row["forward_tflop"] > 0
        assert row["model_tflop_per_step"] == 3 * row["forward_tflop"] and 0 < row["mfu"]
    lora = json.loads((tmp_path / "train_wan14b_lora.json").read_text())
    full = json.loads((tmp_path / "train_wan1.3b_ops.json").read_text())
    assert lora["trainable_params_b"] < full["trainable_params_b"]  # adapters only


def test_backbone_and_latency_benchmarks_smoke_for_cogvideox(tmp_path):
    done = run_script(["benchmarks/backbones.py", "--smoke", "--models", "cogvideox5b", "--steps", "1",
                       "--out", str(tmp_path / "backbones.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "error" not in json.loads((tmp_path / "backbones.json").read_text())["rows"][0]
    done = run_script(["benchmarks/infer_latency.py", "--smoke", "--model", "cogvideox5b", "--steps", "2",
                       "--variants", "none", "fastercache", "--out", str(tmp_path / "infer.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "infer.json").read_text())["rows"]}
    assert set(rows) == {"stock diffusers", "none", "fastercache"} and "error" not in rows["fastercache"]
    assert rows["none"]["psnr_to_stock_db"] > 35 and "psnr_to_none_db" in rows["fastercache"]
