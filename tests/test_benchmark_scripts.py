"""The GPU benchmark scripts run end to end at toy sizes on the CPU (`--smoke`), so a change to the code
they drive cannot silently break them between device runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from torch import nn

pytestmark = pytest.mark.slow  # each runs a benchmark script end to end: minutes on 2 cores


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
        assert 0 < row["mfu_executed"] and "3 x forward" in row["flop_convention"]
    lora = json.loads((tmp_path / "train_wan14b_lora.json").read_text())
    full = json.loads((tmp_path / "train_wan1.3b_ops.json").read_text())
    assert lora["trainable_params_b"] < full["trainable_params_b"]  # adapters only
    # a full fine-tune executes about what the convention counts (no input gradient of the first layer)
    assert 0.95 < full["executed_tflop_per_step"] / full["model_tflop_per_step"] <= 1.0
    # a frozen base skips its weight gradients; at toy width (32) the rank-32 adapters' own matmuls dominate
    assert lora["executed_backward_tflop"] < 1.5 * lora["executed_forward_tflop"]
    assert lora["executed_forward_tflop"] > lora["forward_tflop"]


class LoraAttention(nn.Module):
    """One self-attention layer: q, k, v and out projections without bias, SDPA over `heads` heads."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for p in (self.to_q, self.to_k,
                                                                                          self.to_v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


def test_executed_flops_of_a_lora_layer_match_a_hand_count():
    """N tokens, width d, rank r, peft LoRA on all four projections of a frozen layer, input without grad.
    Forward: 4 base linears 8Nd^2, adapters 4 x (2Ndr + 2Nrd) = 16Ndr, attention QK^T + PV 4N^2d.
    Backward: to_out's input gradient 2Nd^2 (q, k, v need none: x does not train); to_out's adapters 8Ndr
    (weight and input gradients of B and A); q, k, v adapters 6Ndr each (no input gradient of A); attention
    8N^2d (gradients of q, k, v through both matmuls). The 3 x forward convention would say 24Nd^2 + 12N^2d."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peft import LoraConfig, inject_adapter_in_model
    from train_throughput import step_flops

    n, d, r, heads = 64, 32, 4, 2
    with torch.device("meta"):
        layer = inject_adapter_in_model(LoraConfig(r=r, target_modules=["to_q", "to_k", "to_v", "to_out"]),
                                        LoraAttention(d, heads))
        x = torch.zeros(1, n, d)
    assert {name for name, p in layer.named_parameters() if p.requires_grad} == {
        f"{proj}.lora_{ab}.default.weight" for proj in ("to_q", "to_k", "to_v", "to_out") for ab in "AB"}
    flops = step_flops(lambda: layer(x))
    assert flops["forward"] == 8 * n * d * d + 16 * n * d * r + 4 * n * n * d
    assert flops["backward"] == 2 * n * d * d + 8 * n * d * r + 18 * n * d * r + 8 * n * n * d


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


def test_latency_benchmark_joins_side_by_side_runs_and_splits_a_video_over_two_processes(tmp_path):
    """Stock and `none` in one run, the same variant split over two gloo processes in another (fidelity to
    the first run's saved latents), then --merge: speed-ups against stock and against one process."""
    common = ["--smoke", "--model", "wan14b", "--steps", "2"]
    done = run_script(["benchmarks/infer_latency.py", *common, "--variants", "none", "--save-latents",
                       str(tmp_path / "one"), "--out", str(tmp_path / "one.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_script(["-m", "torch.distributed.run", "--nproc-per-node", "2", "benchmarks/infer_latency.py", *common,
                       "--context-parallel", "2", "--variants", "none", "--reference",
                       f"none={tmp_path / 'one' / 'none.pt'}", "--out", str(tmp_path / "cp.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    split = json.loads((tmp_path / "cp.json").read_text())["rows"][0]
    assert split["variant"] == "none+cp2" and split["psnr_to_none_db"] > 35, split
    done = run_script(["benchmarks/infer_latency.py", "--merge", str(tmp_path / "one.json"), str(tmp_path / "cp.json"),
                       "--out", str(tmp_path / "merged.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "merged.json").read_text())["rows"]}
    assert set(rows) == {"stock diffusers", "none", "none+cp2"}
    assert rows["none+cp2"]["speedup_vs_one_gpu"] == rows["none"]["total_s"] / rows["none+cp2"]["total_s"]
    assert "speedup_vs_stock" in rows["none+cp2"] and rows["none"]["psnr_to_stock_db"] > 35


def test_latency_benchmark_compares_the_first_dit_call_input_by_input():
    done = run_script(["benchmarks/infer_latency.py", "--smoke", "--model", "cogvideox5b", "--check-inputs"])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split("  ", 1) for line in done.stdout.splitlines() if "  " in line and not line.startswith(" "))
    assert {"hidden_states", "encoder_hidden_states", "timestep", "output"} <= set(lines)
    assert done.stdout.splitlines()[-1].endswith("rel 0")  # ours on the stock inputs gives the stock output


def test_latency_benchmark_refuses_a_missing_reference_and_runs_with_other_weights(tmp_path):
    done = run_script(["benchmarks/infer_latency.py", "--smoke", "--reference", f"stock={tmp_path / 'absent.pt'}"])
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"--reference stock={tmp_path / 'absent.pt'}: expected")
    base = {"model": "wan14b", "clip": [9, 64, 64], "steps": 2, "command": "x", "rows": []}
    for name, checksum in (("a.json", 1.0), ("b.json", 2.0)):
        (tmp_path / name).write_text(json.dumps({**base, "weights_checksum": checksum}))
    done = run_script(["benchmarks/infer_latency.py", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                       "--out", str(tmp_path / "merged.json")])
    assert done.returncode != 0 and not (tmp_path / "merged.json").exists()
    assert done.stderr.strip().splitlines()[-1] == "--merge: weights_checksum differs between the runs (1.0 vs 2.0)"


def test_reward_models_smoke_times_every_model_dimension_and_a_reward_model_step(tmp_path):
    out = tmp_path / "reward_models.json"
    done = run_script(["-m", "benchmarks.reward_models", "--smoke", "--clips", "2", "--repeats", "1",
                       "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["part"].split(":")[0] for r in rows] == ["DINO ViT-B/16", "CLIP ViT-B/32", "CLIP ViT-L/14 + linear head",
                                                       "reward model (CLIP ViT-L/14, 24 frames)", "reward model"]
    assert all(r["clips_per_s"] > 0 for r in rows[:4]) and rows[4]["step_s"] > 0 and rows[4]["trainable_params"] > 0


def test_attention_kernel_table_checks_each_kernel_against_exact_fp32_attention():
    """Each row of the kernel table carries its output's distance to fp32 attention: bf16 rounding for a real
    kernel, order one for a kernel that computes something else; a kernel that cannot run says why."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import agreement_with_fp32, attention_kernels

    rows = {row["kernel"]: row for row in attention_kernels(torch.device("cpu"), heads=2, tokens=96, repeats=1)}
    assert rows["flash"]["rel_l2_to_fp32"] < 1e-2 and rows["flash"]["fwd_s"] > 0
    assert "error" in rows["cudnn"]  # a CUDA kernel on the CPU: recorded, not fatal
    wrong = agreement_with_fp32(torch.device("cpu"), lambda q, k, v: v, True, heads=2, tokens=96)
    assert wrong > 0.5


def test_infer_latency_refuses_a_variant_that_cannot_run_before_building_weights():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from infer_latency import check_variants

    check_variants(["none", "lossless", "cache"], torch.device("cpu"))  # nothing missing: returns
    with pytest.raises(SystemExit, match=r"^--variants fast: speedup\.fp8 needs "):
        check_variants(["lossless", "fast"], torch.device("cpu"))
