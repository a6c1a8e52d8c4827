"""Few-step distillation on the tiny world: the teacher against its students, side by side on one CPU machine.

    python benchmarks/distill.py --teacher CKPT [--threads 2] [--clips 32] [--only NAME ...] [--out FILE]

CKPT is the default tiny teacher (`python train.py` writes it: Euler 30 steps, CFG 5). Rows:
- the teacher with its own sampler, at 4 and 8 uniform steps, and on OSS 4/8-step schedules
  (`anisora oss-search`, median over 4 clips);
- each student (`train.py experiment=tiny_dmd | tiny_consistency | tiny_cfg_distill`, plus sweep variants).
Every row is scored by `evaluate.py` on the held-out benchmark twice: with its deployed sampler (direction
accuracy, speed error, mean measured speed, flicker) and with `sampler.replace_known=false` (guided-frame PSNR of
the model alone). Seconds per clip are timed in this process (8 clips, `--threads` threads); the OSS rows also get
their latent distance to the 30-step teacher. Runs go side by side, `--threads` cores each (pinned with taskset
where it exists), so each run's wall time is what it takes on a machine of that many cores.
Writes benchmarks/results/distill_tiny.json (or --out) after every row and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from tiny_ablation import run  # noqa: E402  (benchmarks/, the script's own folder)

TEACHER_ROWS: dict[str, list[str]] = {
    "teacher_30": [],
    "teacher_4": ["sampler.num_steps=4"],
    "teacher_8": ["sampler.num_steps=8"],
    "teacher_oss4": ["sampler.name=euler", "sampler.num_steps=4", "sampler.schedule={oss}/oss_4.json"],
    "teacher_oss8": ["sampler.name=euler", "sampler.num_steps=8", "sampler.schedule={oss}/oss_8.json"],
}
STUDENTS: dict[str, list[str]] = {
    "dmd": ["experiment=tiny_dmd"],
    "dmd_data": ["experiment=tiny_dmd", "method.student_inputs=data"],
    "dmd_lr3e-4": ["experiment=tiny_dmd", "method.role_optimizers.student.lr=3e-4",
                   "method.role_optimizers.critic.lr=3e-4"],
    "dmd_full": ["experiment=tiny_dmd", "method.roles_mode=full", "method.role_optimizers.student.lr=2e-5",
                 "method.role_optimizers.critic.lr=2e-5"],
    "consistency": ["experiment=tiny_consistency"],
    "consistency_lr5e-4": ["experiment=tiny_consistency", "method.role_optimizers.student.lr=5e-4"],
    "cfg": ["experiment=tiny_cfg_distill"],
}
KEPT = ("direction_accuracy", "speed_error", "speed_pred_mean", "temporal_flickering", "first_frame_psnr")


def evaluate(ckpt: Path, overrides: list[str], folder: Path, threads: int, cpus: str, clips: int) -> dict:
    """Scores with the deployed sampler, plus the model-alone first-frame PSNR."""
    common = [f"ckpt={ckpt}", "accelerator=cpu", f"accelerator.num_threads={threads}", "logger=none",
              f"num_clips={clips}"]
    out = {}
    for tag, extra in (("deployed", []), ("model_alone", ["sampler.replace_known=false"])):
        log_dir = folder / tag
        run("evaluate.py", [*common, f"paths.log_dir={log_dir}", *overrides, *extra], folder / "log.txt", threads,
            cpus)
        metrics = json.loads(next(log_dir.glob("evaluate/*/metrics.json")).read_text())
        if tag == "deployed":
            out.update({k: metrics.get(k) for k in KEPT})
        else:
            out["first_frame_psnr_model_alone"] = metrics.get("first_frame_psnr")
    return out


def student_row(name: str, root: Path, teacher: Path, threads: int, cpus: str, clips: int,
                extra: list[str]) -> dict:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    overrides = [*STUDENTS[name], *extra]
    args = [*overrides, f"method.teacher={teacher}", f"paths.log_dir={folder}", "accelerator=cpu",
            f"accelerator.num_threads={threads}", "logger=csv"]
    row: dict = {"overrides": overrides, "train_s": run("train.py", args, folder / "log.txt", threads, cpus)}
    ckpt = next(folder.glob("train/*/checkpoints/last.ckpt"))
    row["ckpt"] = str(ckpt)
    row.update(evaluate(ckpt, [], folder, threads, cpus, clips))
    return row


def teacher_row(name: str, root: Path, teacher: Path, threads: int, cpus: str, clips: int, oss: Path) -> dict:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    overrides = [o.format(oss=oss) for o in TEACHER_ROWS[name]]
    return {"overrides": overrides, "ckpt": str(teacher), **evaluate(teacher, overrides, folder, threads, cpus, clips)}


def seconds_per_clip(ckpt: Path, overrides: list[str], threads: int, clips: int = 8) -> float:
    """Generation time per clip of a checkpoint with its sampler (and `overrides`), after one warm-up clip."""
    import torch

    from anisora.diffusion.sampling import SamplerSpec
    from anisora.inference.loading import load_model
    from anisora.inference.pipeline import generate

    torch.set_num_threads(threads)
    model = load_model(ckpt, torch.device("cpu"), torch.float32)
    spec = dict(model.hparams["sampler"])
    spec.update({o.split("=", 1)[0].removeprefix("sampler."): parse(o.split("=", 1)[1]) for o in overrides})
    spec = SamplerSpec(**spec)
    from anisora.data.synthetic import benchmark_clips
    from anisora.guidance.pair import pair_from_video
    from anisora.inference.pipeline import from_uint8_frames
    from anisora.tasks.infer import world_from_data

    world = world_from_data(model.data)
    batch = benchmark_clips(world, int(model.data.get("seed", 0)), clips)
    pairs = [pair_from_video(from_uint8_frames(c.video), [0]) for c in batch]
    guide, mask = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    captions = [c.caption for c in batch]
    generate(model.backbone, captions[:1], guide[:1], mask[:1], [0], spec)
    start = time.perf_counter()
    generate(model.backbone, captions, guide, mask, list(range(clips)), spec)
    return (time.perf_counter() - start) / clips


def parse(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def oss_latent_distance(teacher: Path, oss: Path, clips: int = 8) -> dict[str, float]:
    """Relative L2 of the final latents to the 30-step teacher's: uniform 4/8 steps and OSS 4/8 (no guided-entry
    replacement, the dynamics the search sees)."""
    import torch

    from anisora.diffusion.sampling import rollout
    from anisora.inference.loading import load_model
    from anisora.tasks.oss_search import benchmark_conditions, teacher_spec

    model = load_model(teacher, torch.device("cpu"), torch.float32)
    full = teacher_spec(model.hparams["sampler"], None)
    specs = {"teacher_4": full.__class__(**{**full.__dict__, "num_steps": 4}),
             "teacher_8": full.__class__(**{**full.__dict__, "num_steps": 8}),
             "teacher_oss4": full.__class__(**{**full.__dict__, "num_steps": 4, "schedule": str(oss / "oss_4.json")}),
             "teacher_oss8": full.__class__(**{**full.__dict__, "num_steps": 8, "schedule": str(oss / "oss_8.json")})}
    sums = dict.fromkeys(specs, 0.0)
    with torch.no_grad():
        for i, (cond, uncond, shape) in enumerate(benchmark_conditions(model, clips)):
            ref = rollout(model.backbone, cond, uncond, shape, full, seeds=[i]).latents
            for name, spec in specs.items():
                out = rollout(model.backbone, cond, uncond, shape, spec, seeds=[i]).latents
                sums[name] += float((out - ref).norm() / ref.norm()) / clips
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="the tiny teacher (a train.py checkpoint)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--reserve", type=int, default=0, help="cores left free (e.g. for a GPU job beside)")
    parser.add_argument("--only", nargs="*", default=None, choices=[*TEACHER_ROWS, *STUDENTS])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_tiny.json")
    parser.add_argument("extra", nargs="*", help="train.py overrides for every student (after --)")
    args = parser.parse_args()
    teacher = args.teacher.resolve()
    if not teacher.is_file():
        sys.exit(f"--teacher: {teacher} does not exist (python train.py writes outputs/train/<time>/checkpoints/"
                 "last.ckpt)")
    names = args.only or [*TEACHER_ROWS, *STUDENTS]
    cores = list(range(args.reserve, os.cpu_count() or 2))
    slots: queue.Queue[str] = queue.Queue()
    for i in range(0, len(cores) - args.threads + 1, args.threads):
        slots.put(",".join(str(c) for c in cores[i : i + args.threads]))
    root = Path(tempfile.mkdtemp(prefix="anisora-distill-"))
    oss = root / "oss"
    rows: dict[str, dict] = {}
    report = {"date": date.today().isoformat(), "machine": f"{os.cpu_count()} cores, {args.threads} per run",
              "command": "python benchmarks/distill.py " + " ".join(sys.argv[1:]), "clips": args.clips,
              "teacher": str(args.teacher), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def pinned(job, *job_args):
        cpus = slots.get()
        try:
            return job(*job_args, cpus)
        finally:
            slots.put(cpus)

    def search(cpus: str) -> float:
        return run(sys.executable, ["-m", "anisora.tasks.convert", "oss-search", str(teacher), str(oss), "--steps",
                                    "4", "8", "--clips", "4", "--accelerator", "cpu"], root / "oss.log",
                   args.threads, cpus)

    def teacher_job(name: str, cpus: str) -> dict:
        if "oss" in name:
            while not (oss / "oss_8.json").exists():
                time.sleep(2)
        return teacher_row(name, root, teacher, args.threads, cpus, args.clips, oss)

    def student_job(name: str, cpus: str) -> dict:
        return student_row(name, root, teacher, args.threads, cpus, args.clips, args.extra)

    with ThreadPoolExecutor(max(1, slots.qsize())) as pool:
        futures = {}
        if any("oss" in n for n in names):
            report["oss_search_s"] = None
            futures[pool.submit(pinned, search)] = "oss_search"
        for n in sorted(names, key=lambda n: n in TEACHER_ROWS):  # students first: the longest jobs
            futures[pool.submit(pinned, student_job if n in STUDENTS else teacher_job, n)] = n
        for fut in as_completed(futures):
            n = futures[fut]
            try:
                result = fut.result()
            except Exception as err:  # one failed row still reports the others
                result = {"error": f"{type(err).__name__}: {err}"[:300]}
            if n == "oss_search":
                report["oss_search_s"] = result
            else:
                rows[n] = result
                print(f"done {n}: {result}", flush=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    for n, row in rows.items():
        if "ckpt" in row:
            row["s_per_clip"] = seconds_per_clip(Path(row["ckpt"]), row["overrides"] if n in TEACHER_ROWS else [],
                                                 args.threads)
    add_ratios(rows)
    if (oss / "oss_8.json").exists():
        report["latent_rel_l2_to_teacher_30"] = oss_latent_distance(teacher, oss)
        report["oss_schedules"] = {k: json.loads((oss / f"oss_{k}.json").read_text())["sigmas"] for k in (4, 8)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def add_ratios(rows: dict[str, dict]) -> None:
    """Direction accuracy and mean measured speed of every row as a share of the 30-step teacher's."""
    base = rows.get("teacher_30", {})
    for row in rows.values():
        for key in ("direction_accuracy", "speed_pred_mean"):
            if base.get(key) and row.get(key) is not None:
                row[f"{key}_vs_teacher"] = row[key] / base[key]


def print_table(report: dict) -> None:
    rows = report["rows"]
    base = rows.get("teacher_30", {}).get("direction_accuracy")
    print("\n| row | direction acc. (vs teacher) | speed err. | mean speed | frame-0 PSNR model alone | flicker "
          "| s/clip | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} |")
            continue
        ratio = f" ({r['direction_accuracy'] / base:.0%})" if base else ""
        train = f"{r['train_s']:.0f}" if "train_s" in r else "-"
        print(f"| {name} | {r['direction_accuracy']:.3f}{ratio} | {r['speed_error']:.3f} | {r['speed_pred_mean']:.3f} "
              f"| {r['first_frame_psnr_model_alone']:.1f} | {r['temporal_flickering']:.3f} "
              f"| {r.get('s_per_clip', float('nan')):.3f} | {train} |")
    if "latent_rel_l2_to_teacher_30" in report:
        print("latent rel. L2 to the 30-step teacher:", {k: round(v, 4) for k, v in
                                                        report["latent_rel_l2_to_teacher_30"].items()})


if __name__ == "__main__":
    main()
