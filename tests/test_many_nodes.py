"""Many nodes, simulated on one CPU: two torchrun launches on localhost (`--nnodes 2`, c10d rendezvous) train the
tiny model under DDP to the weights of one process, keep sequence-parallel groups inside a node, and encode every
shard exactly once; data splits by global rank over worlds that span nodes; several nodes without a cluster
launch fail in one line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY, run_entry

from anisora.accelerators.cluster import check_launch
from anisora.accelerators.distributed import check_groups_within_nodes
from anisora.config.errors import ConfigError
from anisora.data.datamodule import SyntheticDataModule
from anisora.data.shard_stream import ShardStream

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
RUN = [*TINY, "trainer.max_steps=2", "model.objective.motion_weight=0", "optimizer.warmup_steps=0",
       "optimizer.ema_decay=0", "logger=none", "callbacks.sample_videos=false", "trainer.log_every_n_steps=1"]
ENCODE_MODEL = [o for o in TINY if o.startswith("model.")]
LAUNCH_ENV = {k: "" for k in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "RANK", "WORLD_SIZE", "LOCAL_RANK")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(program: list[str], nproc: int, timeout: float = 180, kill_when=None) -> list[str]:
    """Launch `program` as two torchrun "nodes" of `nproc` processes each on localhost; the first hosts the c10d
    store. Returns each launch's combined output. With `kill_when`, both launches are SIGKILLed (whole process
    groups, as a pre-empted job) once it returns True, and their exit codes are not checked."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"t{os.getpid()}{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launch = [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
              "--rdzv-endpoint", endpoint, "--rdzv-id", run_id, "--max-restarts", "0"]
    procs = [subprocess.Popen([*launch, "--rdzv-conf", f"is_host={int(n == 0)}", *program], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=kill_when is not None) for n in (0, 1)]
    if kill_when is not None:
        deadline = time.time() + timeout
        while time.time() < deadline and all(p.poll() is None for p in procs) and not kill_when():
            time.sleep(0.002)
        kill_launched(procs, program)
        return [p.communicate()[0] for p in procs]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


def kill_launched(procs: list[subprocess.Popen], program: list[str]) -> None:
    """SIGKILL the launches and their workers (torch elastic starts each worker in a session of its own, so the
    launch's process group does not hold them): every process whose command line is `program`'s."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    marker = "\0".join(program[-2:]).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ProcessLookupError):
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)


def trained_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    return {k: v for k, v in state["state_dict"].items() if k.startswith("backbone.denoiser.")}


@pytest.mark.slow
def test_ddp_over_two_torchrun_nodes_matches_one_process(tmp_path):
    """2 nodes x 1 process x batch 2 = the same 4 clips per step as one process with batch 4."""
    single = run_entry("train.py", *RUN, "data.batch_size=4", log_dir=tmp_path / "one",
                       run_dir=tmp_path / "one" / "run")
    assert single.returncode == 0, single.stderr[-4000:]
    run_dir = tmp_path / "nodes" / "run"  # one folder every node sees (a shared filesystem)
    outputs = two_nodes(["train.py", *RUN, "strategy=ddp", "accelerator.num_nodes=2", "accelerator.devices=1",
                         "data.batch_size=2", f"paths.log_dir={tmp_path / 'nodes'}", f"hydra.run.dir={run_dir}"], 1)
    members = [sorted(set(re.findall(r"GLOBAL_RANK: \d+, MEMBER: (\d)/2", out))) for out in outputs]
    assert sorted(members) == [["1"], ["2"]]  # one rank per launch, in one world of two
    reference, nodes = trained_weights(tmp_path / "one" / "run"), trained_weights(run_dir)
    assert reference.keys() == nodes.keys() and reference
    for key in reference:
        torch.testing.assert_close(nodes[key], reference[key], atol=2e-5, rtol=1e-4, msg=key)
    assert max((nodes[k] - reference[k]).abs().max().item() for k in reference) < 2e-5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no temporaries left


def weights_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == step
    return {k: v for k, v in state["state_dict"].items() if k.startswith("backbone.denoiser.")}


@pytest.mark.slow
def test_a_killed_two_node_run_resumes_exactly_and_its_checkpoint_loads_on_one_node(tmp_path):
    """Same node count: killed after a mid-run checkpoint, ckpt_path=last continues to the weights of the
    uninterrupted run. Another node count (DDP's full checkpoint): weights, optimizer and step load and it trains on."""
    steps = [o for o in RUN if not o.startswith("trainer.max_steps")] + [
        "trainer.max_steps=8", "callbacks.checkpoint_every_n_steps=2"]
    nodes = ["strategy=ddp", "accelerator.num_nodes=2", "accelerator.devices=1", "data.batch_size=2"]
    straight = tmp_path / "straight" / "train" / "run"
    two_nodes(["train.py", *steps, *nodes, f"paths.log_dir={tmp_path / 'straight'}", f"hydra.run.dir={straight}"], 1)
    runs = tmp_path / "nodes" / "train"  # where ckpt_path=last looks: <paths.log_dir>/train
    killed = [*nodes, f"paths.log_dir={tmp_path / 'nodes'}"]
    mid_run = {"step000004.ckpt", "step000006.ckpt"}  # last.ckpt exists by then
    two_nodes(["train.py", *steps, *killed, f"hydra.run.dir={runs / 'first'}"], 1,
              kill_when=lambda: bool(mid_run & {p.name for p in (runs / "first" / "checkpoints").glob("*.ckpt")}))
    start = runs / "first" / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(start, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= stopped_at < 8, "the run was not interrupted"
    two_nodes(["train.py", *steps, *killed, "ckpt_path=last", f"hydra.run.dir={runs / 'resumed'}"], 1)
    reference, resumed = weights_at(straight, 8), weights_at(runs / "resumed", 8)
    assert reference.keys() == resumed.keys() and reference
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=2e-5, rtol=1e-4, msg=key)
    other = run_entry("train.py", *steps, "data.batch_size=4", f"ckpt_path={start}", log_dir=tmp_path / "other",
                      run_dir=tmp_path / "other" / "run")
    assert other.returncode == 0, other.stderr[-4000:]
    moved = weights_at(tmp_path / "other" / "run", 8)  # the step count went on from the checkpoint's
    before = torch.load(start, map_location="cpu", weights_only=False)["state_dict"]
    assert any(not torch.equal(moved[k], before[k]) for k in moved)


MESH_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import torch.distributed as dist
    from anisora.accelerators.distributed import init_process_group, launched_place, sequence_parallel_mesh

    place = launched_place()
    init_process_group(torch.device("cpu"))
    mesh = sequence_parallel_mesh(2, torch.device("cpu"), place.node_rank)
    group = [int(r) for r in mesh.mesh.flatten().tolist()]
    nodes = [None] * place.world_size
    dist.all_gather_object(nodes, place.node_rank)
    with open(f"{sys.argv[1]}/rank{place.rank}.json", "w") as fh:
        json.dump({"rank": place.rank, "local_rank": place.local_rank, "group": group, "nodes": nodes}, fh)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_sequence_parallel_groups_of_a_two_by_two_launch_stay_inside_a_node(tmp_path):
    script = tmp_path / "mesh.py"
    script.write_text(MESH_SCRIPT)
    two_nodes([str(script), str(tmp_path)], 2, timeout=120)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    nodes = ranks[0]["nodes"]
    assert sorted(nodes) == [0, 0, 1, 1]
    groups = {tuple(r["group"]) for r in ranks}
    assert groups == {(0, 1), (2, 3)}  # two groups of two, each this rank's own
    for r in ranks:
        assert r["rank"] in r["group"] and len({nodes[m] for m in r["group"]}) == 1
    assert nodes[0] != nodes[2]  # ... on different nodes: data parallel across nodes


def test_a_group_that_spans_nodes_fails_in_one_line():
    check_groups_within_nodes([[0, 1], [2, 3]], [0, 0, 1, 1])
    with pytest.raises(ConfigError) as info:
        check_groups_within_nodes([[0, 1], [2, 3]], [0, 1, 0, 1])  # srun --distribution=cyclic
    assert str(info.value).startswith("trainer.sequence_parallel: the group of ranks [0, 1] spans nodes [0, 1]")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("nodes", "per_node", "workers", "sp"), [(2, 8, 2, 1), (3, 2, 3, 1), (2, 4, 1, 2)])
def test_shards_split_by_global_rank_over_nodes_cover_every_shard_once(nodes, per_node, workers, sp):
    """Data slots are (global rank // sequence parallel, worker); every shard is read by exactly one slot per
    pass, whatever the node layout, and a sequence-parallel group's ranks read the same shards."""
    shards = [f"/data/{k:06d}.tar" for k in range(97)]
    readers = {}
    for node in range(nodes):
        for local in range(per_node):
            module = SyntheticDataModule(None, 0, 1)
            module.sequence_parallel = sp
            module.trainer = SimpleNamespace(global_rank=node * per_node + local, world_size=nodes * per_node)
            rank, world = module.data_rank()
            stream = ShardStream(shards, 1, seed=4, rank=rank, world_size=world)
            readers[node * per_node + local] = [s for w in range(workers) for s in stream.worker_shards(1, w, workers)]
    read = [s for rank in range(0, nodes * per_node, sp) for s in readers[rank]]
    assert sorted(read) == shards
    for rank in range(nodes * per_node):
        assert readers[rank] == readers[rank - rank % sp]


@pytest.mark.slow
def test_encode_over_two_torchrun_nodes_writes_every_shard_once(tmp_path):
    from anisora.data.manifest import read_manifest
    from anisora.data.shard_format import decode_sample, read_tar
    from anisora.data.synthetic import WorldConfig
    from anisora.data.synthetic_export import export_world

    manifest = export_world(tmp_path / "src", WorldConfig(num_frames=5, height=16, width=16, sprite_size=6),
                            seed=0, count=9, clips_per_file=3)
    out = tmp_path / "shards"
    outputs = two_nodes(["-m", "anisora.tasks.data_cli", "encode", f"manifest={manifest}", f"out={out}",
                         "accelerator=cpu", "shard_max_samples=2", "progress=false", f"paths.log_dir={tmp_path}",
                         f"hydra.run.dir={tmp_path / 'run'}", *ENCODE_MODEL], 1)
    plans = sorted(m for o in outputs for m in re.findall(r"rank (\d) of (\d): (\d) shards, 0 already complete", o))
    assert plans == [("0", "2", "3"), ("1", "2", "2")]  # shards 0, 2, 4 and 1, 3: global ranks, not local ones
    info = json.loads((out / "dataset.json").read_text())
    assert info["num_shards"] == 5 and info["shards_complete"] == 5 and info["samples"] == 9
    ids = [decode_sample(fields)["meta"]["id"] for tar in sorted(out.glob("*.tar")) for _, fields in read_tar(str(tar))]
    assert sorted(ids) == sorted(r.id for r in read_manifest(manifest)) and len(set(ids)) == 9


def test_several_nodes_without_a_cluster_launch_fail_in_one_line(tmp_path):
    out = run_entry("train.py", *TINY, "accelerator.num_nodes=2", log_dir=tmp_path / "outputs")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: accelerator.num_nodes: 2 needs a multi-node launch: torchrun --nnodes 2 --nproc-per-node 1 "
        "--rdzv-backend c10d --rdzv-endpoint HOST:PORT train.py ... on every node, or srun under SLURM (sbatch "
        "--nodes 2 --ntasks-per-node 1); this process was started by neither")
    assert not (tmp_path / "outputs").exists()


def test_a_launch_that_does_not_match_the_config_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_launch(2, 2, 2)
    with pytest.raises(ConfigError) as info:
        check_launch(2, 1, 1)
    assert str(info.value).startswith("accelerator.num_nodes: this torchrun launch does not match "
                                      "accelerator.devices=1 x accelerator.num_nodes=2: You set `devices=1`")
    assert "\n" not in str(info.value)


def test_under_srun_ranks_and_nodes_come_from_slurm(monkeypatch):
    """What srun sets for task 9 of 2 nodes x 8: encode and training read the global rank and node from it."""
    from anisora.accelerators.distributed import launched_place

    for key, value in {"SLURM_NTASKS": "16", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8", "SLURM_PROCID": "9",
                       "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "n[1-2]",
                       "SLURM_JOB_ID": "77"}.items():
        monkeypatch.setenv(key, value)
    for key in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    place = launched_place()
    assert (place.rank, place.world_size, place.local_rank, place.node_rank) == (9, 16, 1, 1)
    check_launch(2, 8, 8)
    with pytest.raises(ConfigError) as info:
        check_launch(1, 8, 8)
    assert str(info.value).startswith("accelerator.num_nodes: this srun launch does not match accelerator.devices=8 "
                                      "x accelerator.num_nodes=1: You set `num_nodes=1` in Lightning, but the number "
                                      "of nodes configured in SLURM `--nodes=2` does not match")
