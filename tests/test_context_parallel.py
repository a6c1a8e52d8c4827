"""Context parallelism on 2 CPU processes (gloo): one sequence split across ranks gives the single-process
output, and, with gradients summed over the ranks, the single-process gradients (what sequence-parallel
training builds on)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import WanTransformer3DModel

from anisora.config.errors import ConfigError
from anisora.inference.speedups import context_parallel


def tiny_dit() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=16,
                                 out_channels=16, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2,
                                 rope_max_seq_len=32).eval()


def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(2, 16, 3, 8, 8, generator=gen), "timestep": torch.tensor([500, 250]),
            "encoder_hidden_states": torch.randn(2, 6, 32, generator=gen)}


def forward_backward(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = model(**inputs(), return_dict=False)[0]
    out.square().mean().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, port: int, kind: str, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = tiny_dit()
        context_parallel.enable(model, 2, kind)
        out, grads = forward_backward(model)
        for grad in grads.values():
            dist.all_reduce(grad)  # each rank holds its shard's share of a replicated parameter's gradient
        result[rank] = (out, grads)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["ulysses"])  # ring needs an attention kernel that returns log-sum-exp (GPU)
def test_split_sequence_matches_one_process_in_output_and_summed_gradients(kind):
    torch.set_num_threads(1)
    reference_out, reference_grads = forward_backward(tiny_dit())
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(worker, args=(free_port(), kind, result), nprocs=2, join=True)
        result = dict(result)
    for rank in (0, 1):
        out, grads = result[rank]
        torch.testing.assert_close(out, reference_out, rtol=1e-5, atol=1e-5)
        assert grads.keys() == reference_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_models_and_degrees_that_cannot_split_fail_in_one_line():
    from diffusers import CogVideoXTransformer3DModel

    cog = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=8, out_channels=4,
                                      time_embed_dim=8, text_embed_dim=8, num_layers=1, sample_width=4,
                                      sample_height=4, sample_frames=5, max_text_seq_length=4)
    with pytest.raises(ConfigError, match="^speedup.context_parallel: CogVideoXTransformer3DModel has no"):
        context_parallel.enable(cog, 2)
    with pytest.raises(ConfigError, match="^speedup.context_parallel: Ulysses splits the 4 attention heads: 3"):
        context_parallel.enable(tiny_dit(), 3)
