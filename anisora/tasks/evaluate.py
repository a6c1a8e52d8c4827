"""evaluate.py: generate the held-out benchmark with a checkpoint (or read a folder of mp4s) and score it."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from anisora.accelerators.devices import (
    check_attention_backend,
    inference_dtype,
    resolve_device,
    set_attention_backend,
    set_num_threads,
)
from anisora.config.errors import ConfigError
from anisora.data.captions import caption_with_scores, sidecar_caption
from anisora.data.synthetic import benchmark_clips
from anisora.evaluation.metrics import ClipFailure, ClipScore, aggregate, guide_fidelity, score_clip
from anisora.evaluation.report import write_report
from anisora.guidance.spec import build_pair, guide_spec
from anisora.inference.guide_files import GuideFiles, check_guide_paths
from anisora.inference.loading import load_model, read_hparams, trained_data
from anisora.inference.pipeline import from_uint8_frames, generate
from anisora.inference.speedups import SpeedupSpec, apply_speedups, check_speedups
from anisora.inference.video_io import (
    display_scale,
    encode_png,
    read_image,
    read_video,
    write_mp4,
)
from anisora.io import atomic_write_bytes
from anisora.rewards import Clip, Scorer, build_scorer, scorer_names
from anisora.rewards.clips import guided_frames
from anisora.rewards.vbench_aggregate import quality as vbench_quality
from anisora.tasks.common import environment_defaults, find_checkpoint, run_task, write_run_record
from anisora.tasks.infer import sampler_spec, world_from_data
from anisora.tracking.wandb_run import print_sync_command, run_identity, video_table

log = logging.getLogger("anisora.evaluate")
GROUPS = ["guide", "sampler", "accelerator", "logger", "paths"]


# What a damaged video or sidecar raises while it is read and scored (zip: a cut .guide.npz).
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def build_scorers(cfg: DictConfig) -> list[Scorer]:
    """The scorers of `metrics=[...]` (names of the reward group or its named sets such as `vbench_i2v`, sharing
    `reward`'s settings) and of `reward=`, built (weights checked) before any video is read."""
    settings = OmegaConf.to_container(cfg.reward, resolve=True) if cfg.reward is not None else {}
    names = scorer_names(list(cfg.metrics))
    scorers = [build_scorer({**settings, "name": name}) for name in names if name != settings.get("name")]
    return scorers + ([build_scorer(settings)] if settings else [])


def dimensions(scorers: list[Scorer], clip: Clip) -> dict[str, float]:
    """Every scorer's dimensions of one clip; where two scorers name one dimension, the first one's value."""
    out: dict[str, float] = {}
    for scorer in scorers:
        for k, v in scorer.score([clip])[0].items():
            out.setdefault(k, float(v))
    return out


def score_file(path: Path, scorers: list[Scorer] = ()) -> ClipScore:
    """Score one mp4 with its sidecars: <stem>.json (`truth`, `scale`, `caption`, `fps`) or <stem>.txt (the
    caption), <stem>.guide.png (the first frame's guide) and <stem>.guide.npz (every guided frame with its kept
    region); `scorers` add their dimensions."""
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    video = read_video(path, downscale=int(meta.get("scale", 1)))
    guide_path = path.with_suffix(".guide.png")
    guide = read_image(guide_path) if guide_path.is_file() else None
    clip = Clip(name=path.stem, frames=video, prompt=sidecar_caption(path) or "", truth=meta.get("truth"),
                fps=meta.get("fps"))
    guides = None
    npz_path = path.with_suffix(".guide.npz")
    if npz_path.is_file():
        with np.load(npz_path) as z:
            clip.guide_indices = [int(i) for i in z["indices"]]
            clip.guide_frames, clip.guide_keep = z["given"], z["keep"]
            guides = guide_fidelity(video, clip.guide_frames, clip.guide_keep, clip.guide_indices)
    score = score_clip(path.stem, video, guide, meta.get("truth"), guides)
    score.dimensions = dimensions(list(scorers), clip)
    score.label = meta.get("label")
    return score


def score_benchmark_file(path: str, scorers: list[Scorer] = ()) -> tuple[list[ClipScore], list[ClipFailure]]:
    """Score every row's video of a benchmark file (anisora.evaluation.benchmark_file) with its guides and label;
    an unreadable video is recorded and the rest are scored."""
    from anisora.evaluation.benchmark_file import clip_of_row, read_benchmark

    rows = read_benchmark(path)
    scores, failures = [], []
    for row in rows:
        try:
            clip = clip_of_row(row)
        except UNREADABLE as ex:
            failures.append(ClipFailure.of(row.video, ex))
            log.warning("%s not scored: %s", row.video.name, failures[-1].error)
            continue
        given = guide_fidelity(clip.frames, clip.guide_frames, clip.guide_keep, clip.guide_indices) \
            if clip.guide_indices else None
        first = clip.guide_frames[0] if clip.guide_indices[:1] == [0] and clip.guide_keep[0].all() else None
        score = score_clip(row.name, clip.frames, first, None, given)
        score.dimensions = dimensions(list(scorers), clip)
        score.label = row.label
        scores.append(score)
    if not scores:
        raise ConfigError("benchmark", f"none of the {len(rows)} videos of {path} could be read "
                                       f"(first: {failures[0].file}: {failures[0].error})")
    log.info("scored %d of %d benchmark videos (%d unreadable)", len(scores), len(rows), len(failures))
    return scores, failures


def score_folder(folder: Path, scorers: list[Scorer] = ()) -> tuple[list[ClipScore], list[ClipFailure]]:
    """Score every mp4 in a folder; a file that cannot be read is recorded with its error and the rest are
    scored. Refused (ConfigError) only when there is nothing to score."""
    videos = sorted(folder.glob("*.mp4"))
    if not videos:
        raise ConfigError("videos", f"no .mp4 files in {folder}")
    scores, failures = [], []
    for path in videos:
        try:
            scores.append(score_file(path, scorers))
        except UNREADABLE as ex:
            failures.append(ClipFailure.of(path, ex))
            log.warning("%s not scored: %s", path.name, failures[-1].error)
    if not scores:
        first = failures[0]
        raise ConfigError("videos", f"none of the {len(videos)} .mp4 files in {folder} could be read "
                                    f"(first: {first.file}: {first.error})")
    log.info("scored %d of %d videos (%d unreadable)", len(scores), len(videos), len(failures))
    return scores, failures


def check_guides(cfg: DictConfig, ckpt: Path) -> None:
    """The guide spec and its files against the checkpoint's clip size, before anything is written."""
    world = world_from_data(trained_data(read_hparams(ckpt)))
    check_guide_paths(cfg.guide)
    spec = guide_spec(cfg.guide, world.num_frames)
    files = GuideFiles(world.height, world.width, cfg.guide.resize)
    first = from_uint8_frames(benchmark_clips(world, 0, 1)[0].video)
    build_pair(spec, world.num_frames, world.height, world.width, files.image, files.video, first,
               cfg.guide.mask_threshold, files.mask)


def generate_benchmark(cfg: DictConfig, ckpt: Path, run_dir: Path, scorers: list[Scorer] = ()) -> list[ClipScore]:
    """Sample the benchmark clips guided by `guide=` (first frame by default) and their captions; keep every
    video with its truth and its guide."""
    device = resolve_device(cfg.accelerator.name)
    check_attention_backend(cfg.accelerator.attention_backend)
    speedups = SpeedupSpec.from_config(cfg.speedup)
    check_speedups(speedups, device)
    model = load_model(ckpt, device, inference_dtype(device, cfg.accelerator.precision))
    set_attention_backend(model.backbone.denoiser, cfg.accelerator.attention_backend, device,
                          next(model.backbone.denoiser.parameters()).dtype)
    apply_speedups(model.backbone, speedups, device)
    data = model.data
    world = world_from_data(data)
    f, h, w = world.num_frames, world.height, world.width
    spec = guide_spec(cfg.guide, f)
    files = GuideFiles(h, w, cfg.guide.resize)
    scale = display_scale(h, w)
    clips = benchmark_clips(world, int(data.get("seed", 0)), cfg.num_clips)
    sampler = sampler_spec(cfg, model.hparams)  # the checkpoint's own sampler, with command-line changes
    scores: list[ClipScore] = []
    for start in range(0, len(clips), cfg.batch_size):
        batch = clips[start : start + cfg.batch_size]
        pairs = [build_pair(spec, f, h, w, files.image, files.video, from_uint8_frames(c.video),
                            cfg.guide.mask_threshold, files.mask) for c in batch]
        captions = [caption_with_scores(c.caption, cfg.motion_score, cfg.aesthetic_score) for c in batch]
        out = generate(model.backbone, captions, torch.stack([p[0] for p in pairs]),
                       torch.stack([p[1] for p in pairs]), [cfg.seed + start + i for i in range(len(batch))], sampler)
        for i, (clip, video) in enumerate(zip(batch, out)):
            name = f"bench{start + i:03d}"
            folder = run_dir / "videos"
            write_mp4(folder / f"{name}.mp4", video, scale=scale)
            indices, given, keep = guided_frames(*pairs[i])
            first = clip.video[0] if indices[:1] == [0] and keep[0].all() else None
            if first is not None:
                atomic_write_bytes(folder / f"{name}.guide.png", encode_png(first))
            buffer = io.BytesIO()
            np.savez_compressed(buffer, given=given, keep=keep, indices=np.asarray(indices))
            atomic_write_bytes(folder / f"{name}.guide.npz", buffer.getvalue())
            meta = {"caption": captions[i], "truth": clip.truth.to_json(), "scale": scale}
            atomic_write_bytes(folder / f"{name}.json", (json.dumps(meta) + "\n").encode())
            score = score_clip(name, video, first, meta["truth"], guide_fidelity(video, given, keep, indices))
            score.label = f"moves {clip.truth.direction}"  # the synthetic world's action label
            score.dimensions = dimensions(list(scorers), Clip(name=name, frames=video, prompt=captions[i],
                                                              guide_indices=indices, guide_frames=given,
                                                              guide_keep=keep, truth=meta["truth"]))
            scores.append(score)
        log.info("scored %d / %d clips", len(scores), len(clips))
    return scores


def log_to_wandb(cfg: DictConfig, run_dir: Path, metrics: dict[str, float], chart: Path,
                 scores: list[ClipScore], video_folder: Path | None) -> None:
    """The means, the chart, and a table with one row per clip: its video and every dimension."""
    if cfg.logger.kind != "wandb":
        return
    import wandb

    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir),
                     mode="offline" if cfg.logger.offline else "online", **run_identity(cfg),
                     name=f"evaluate-{run_dir.name}", config=OmegaConf.to_container(cfg, resolve=True))
    logged = {f"eval/{k}": v for k, v in metrics.items()} | {"eval/chart": wandb.Image(str(chart))}
    if scores:
        rows = [clip_row(s, video_folder) for s in scores]
        logged["eval/clips"] = video_table(rows)
        logged["eval/videos"] = [wandb.Video(r["video"], caption=r["clip"], format="mp4")
                                 for r in rows[:8] if r["video"]]
    run.log(logged)
    print_sync_command()
    run.finish()


def clip_row(score: ClipScore, video_folder: Path | None) -> dict[str, object]:
    """A clip's table row: name, video (a path, or '' when there is none to show) and every scalar score."""
    video = video_folder / f"{score.name}.mp4" if video_folder is not None else None
    row: dict[str, object] = {"clip": score.name, "video": str(video) if video and video.is_file() else ""}
    for key, value in score.to_json().items():
        if isinstance(value, dict):
            row |= {f"{key}/{k}": float(v) for k, v in value.items()}
        elif key != "name":
            row[key] = value if isinstance(value, (str, type(None))) else float(value)
    return row


def compare(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Earlier evaluations side by side (compare.md, compare.json, compare.png); nothing is scored."""
    from anisora.evaluation.compare import write_comparison

    sources = [str(s) for s in cfg.compare]
    paths = write_comparison(run_dir, sources)  # every run is read (and checked) before anything is written
    write_run_record(cfg, run_dir)
    log.info("comparison of %d evaluations: %s", len(sources), paths["compare_md"])
    return {"num_runs": float(len(sources))}


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    if cfg.compare:
        return compare(cfg, run_dir)
    if cfg.benchmark is not None:
        from anisora.evaluation.benchmark_file import read_benchmark

        read_benchmark(cfg.benchmark)  # every row checked before anything is written
        ckpt = None
    elif cfg.videos is not None:
        folder = Path(cfg.videos).expanduser()
        if not folder.is_dir():
            raise ConfigError("videos", f"folder {folder} does not exist")
        ckpt = None
    else:
        ckpt = find_checkpoint(cfg.ckpt, Path(cfg.paths.log_dir), "ckpt")
        check_guides(cfg, ckpt)
        check_attention_backend(cfg.accelerator.attention_backend)
        check_speedups(SpeedupSpec.from_config(cfg.speedup), resolve_device(cfg.accelerator.name))
    scorers = build_scorers(cfg)
    environment_defaults()
    write_run_record(cfg, run_dir)
    set_num_threads(cfg.accelerator.num_threads)
    if cfg.benchmark is not None:
        scores, failures = score_benchmark_file(cfg.benchmark, scorers)
    elif ckpt is None:
        scores, failures = score_folder(folder, scorers)
    else:
        scores, failures = generate_benchmark(cfg, ckpt, run_dir, scorers), []
    metrics = aggregate(scores) | {"num_failed": float(len(failures))}
    metrics |= vbench_quality(metrics)  # over the VBench quality dimensions the scorers gave
    paths = write_report(run_dir, metrics, scores, title=f"Evaluation of {ckpt or cfg.benchmark or cfg.videos}",
                         failures=failures)
    video_folder = run_dir / "videos" if ckpt is not None else (folder if cfg.videos is not None else None)
    log_to_wandb(cfg, run_dir, metrics, paths["chart_png"], scores, video_folder)
    width = max(len(k) for k in metrics)
    print("\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                    for k, v in sorted(metrics.items())))
    log.info("report: %s", paths["report_md"])
    return metrics


def run(cfg: DictConfig) -> dict[str, float]:
    return run_task(cfg, GROUPS, evaluate)



