"""`anisora-data curate`: raw videos -> scored clips (manifest.jsonl), report.md and score histograms.

Work happens per source in worker processes; each finished source is saved as a part file, so a re-run
resumes. The manifest is then assembled from the parts in a fixed order (sources sorted by path, clips
by start frame), thresholds applied and duplicates marked over all clips, so the same input gives the
same bytes however the work was split or interrupted.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anisora.config.errors import ConfigError
from anisora.config.validate import check_config
from anisora.data.captions import caption_with_scores, motion_score_from_flow, sidecar_caption
from anisora.data.curation import hooks
from anisora.data.curation.analyse import Settings, analyse
from anisora.data.curation.filters import apply_limits, limits_of, mark_duplicates
from anisora.data.curation.frames import list_sources
from anisora.data.curation.parts import part_path, read_part, remove_stale_temporaries, write_part
from anisora.data.curation.report import report_markdown, thresholds, write_histograms
from anisora.data.manifest import ClipRecord
from anisora.io import atomic_write_bytes
from anisora.tasks.common import write_run_record

log = logging.getLogger("anisora.curate")
SECTIONS = ["shots", "duration", "motion", "text", "border", "static", "duplicate", "resolution", "aesthetic",
            "caption"]


def settings_of(cfg: DictConfig) -> Settings:
    m, t = cfg.motion, cfg.text
    return Settings(
        analysis_height=cfg.analysis_height, detector=cfg.shots.detector, shot_threshold=cfg.shots.threshold,
        min_content_val=cfg.shots.min_content_val, window_width=cfg.shots.window_width,
        min_shot_s=cfg.shots.min_shot_s, max_s=cfg.duration.max_s, flow_method=m.method, flow_pairs=m.pairs,
        flow_percentile=m.percentile, reference_height=m.reference_height, raft_weights=m.raft_weights,
        raft_module=m.raft_module, text_frames=t.frames, text_height=t.height, text_persistence=t.persistence,
        text_polarity=t.polarity,
        text_weights=t.weights, text_module=t.module, border_frames=cfg.border.frames, border_luma=cfg.border.luma,
        static_frames=cfg.static.frames, pixel_delta=cfg.static.pixel_delta, hash_frames=cfg.duplicate.frames,
        aesthetic_weights=cfg.aesthetic.weights, aesthetic_module=cfg.aesthetic.module,
        aesthetic_frames=cfg.aesthetic.frames,
        caption_model=cfg.caption.model if cfg.caption.enabled else None, caption_prompt=cfg.caption.prompt,
        caption_tokens=cfg.caption.max_new_tokens)


def validate(cfg: DictConfig) -> list[Path]:
    """Every check that can fail, before anything is read or written; returns the sources."""
    check_config(cfg, SECTIONS)
    if cfg.duration.min_s > cfg.duration.max_s:
        raise ConfigError("duration.min_s",
                          f"must be <= duration.max_s ({cfg.duration.max_s}); got {cfg.duration.min_s}")
    if cfg.motion.min is not None and cfg.motion.max is not None and cfg.motion.min > cfg.motion.max:
        raise ConfigError("motion.min", f"must be <= motion.max ({cfg.motion.max}); got {cfg.motion.min}")
    px, sc = list(cfg.caption.motion_px), list(cfg.caption.motion_scores)
    if len(px) < 2 or len(px) != len(sc):
        raise ConfigError("caption.motion_px", f"needs >= 2 points and as many as caption.motion_scores ({len(sc)})")
    if any(b <= a for a, b in zip(px, px[1:])):
        raise ConfigError("caption.motion_px", f"must increase strictly; got {px}")
    hooks.check_weights_hook(cfg.motion.raft_weights, cfg.motion.raft_module, "motion", "raft_weights", "raft_module")
    hooks.check_weights_hook(cfg.text.weights, cfg.text.module, "text")
    hooks.check_weights_hook(cfg.aesthetic.weights, cfg.aesthetic.module, "aesthetic")
    if cfg.caption.enabled:
        hooks.check_caption_model(cfg.caption.model)
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file (expected a folder)")
    return list_sources(cfg.input)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("curate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), disable=not enabled)


def analyse_sources(todo: list[tuple[Path, Path]], settings: Settings, workers: int, progress: bool) -> None:
    """Analyse each source and save its part as soon as it is done (biggest files first, for balance)."""
    todo = sorted(todo, key=lambda item: -(item[0].stat().st_size if item[0].exists() else 0))
    with _progress(progress) as bar:
        task = bar.add_task("", total=len(todo))
        if workers == 1 or len(todo) <= 1:
            for source, part in todo:
                write_part(part, source, analyse(source, settings))
                bar.update(task, advance=1, description=source.name)
            return
        context = multiprocessing.get_context("spawn")  # no forked OpenCV/FFmpeg thread state
        done: set[Path] = set()
        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
                futures = {pool.submit(analyse, source, settings): (source, part) for source, part in todo}
                try:
                    for future in as_completed(futures):
                        source, part = futures[future]
                        write_part(part, source, future.result())
                        done.add(source)
                        bar.update(task, advance=1, description=source.name)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        except BrokenProcessPool:
            log.warning("a worker died; analysing the remaining sources one process each")
            for source, part in todo:
                if source not in done:
                    write_part(part, source, _isolated(source, settings, context))
                    bar.update(task, advance=1, description=source.name)


def _isolated(source: Path, settings: Settings, context) -> dict[str, Any]:
    """One source in its own process, so a decoder that crashes the process only costs that source."""
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(analyse, source, settings).result()
        except BrokenProcessPool:
            return {"error": "the analysis process died (a crashing decoder?)"}


def records_of(source: Path, part: dict[str, Any]) -> list[tuple[ClipRecord, dict[str, Any]]]:
    if part.get("error") is not None:
        return [(ClipRecord(source=str(source), error=part["error"]), {})]
    out = []
    for clip in sorted(part["clips"], key=lambda c: c["start"]):
        scores = dict(clip["scores"])
        scores["short_side"], scores["fps"] = float(min(part["width"], part["height"])), float(part["fps"])
        record = ClipRecord(source=str(source), start_frame=clip["start"], end_frame=clip["end"], fps=part["fps"],
                            width=part["width"], height=part["height"], scores=scores)
        out.append((record, clip))
    return out


def caption_for(record: ClipRecord, clip: dict[str, Any], sidecar: str | None, cfg: DictConfig) -> str | None:
    text = sidecar or clip.get("model_caption")
    if not text or not cfg.caption.scores:
        return text or None
    aesthetic = record.scores.get("aesthetic", cfg.caption.aesthetic_default)
    return caption_with_scores(text, motion=record.scores["motion_score"], aesthetic=aesthetic)


def assemble(cfg: DictConfig, sources: list[Path], parts: dict[Path, Path]) -> list[ClipRecord]:
    """Records of every source in manifest order, with thresholds, duplicates and captions applied."""
    pairs = [pair for source in sources for pair in records_of(source, read_part(parts[source]) or
                                                               {"error": "analysis result missing"})]
    records = [r for r, _ in pairs]
    for record in records:
        if record.error is None:
            record.scores["motion_score"] = motion_score_from_flow(record.scores["motion"], cfg.caption.motion_px,
                                                                   cfg.caption.motion_scores)
            apply_limits(record, limits_of(cfg))
    if cfg.duplicate.enabled:
        mark_duplicates(records, [c.get("hashes") for _, c in pairs], [c.get("colour") for _, c in pairs],
                        cfg.duplicate.max_distance, cfg.duplicate.max_colour_distance)
    sidecars: dict[str, str | None] = {}
    for record, clip in pairs:
        if record.error is not None:
            continue
        if cfg.caption.enabled:
            if record.source not in sidecars:
                sidecars[record.source] = sidecar_caption(record.source)
            record.caption = caption_for(record, clip, sidecars[record.source], cfg)
        record.keep = not record.reasons
    return records


def curate(cfg: DictConfig, sources: list[Path], out: Path) -> list[ClipRecord]:
    settings = settings_of(cfg)
    remove_stale_temporaries(out)
    parts = {source: part_path(out, source, settings.as_dict()) for source in sources}
    todo = [(source, parts[source]) for source in sources if read_part(parts[source]) is None]
    log.info("%d sources: %d done earlier, %d to analyse with %d worker(s)", len(sources),
             len(sources) - len(todo), len(todo), cfg.workers)
    analyse_sources(todo, settings, cfg.workers, cfg.progress)
    records = assemble(cfg, sources, parts)
    lines = "".join(r.to_json() + "\n" for r in records)
    atomic_write_bytes(out / "manifest.jsonl", lines.encode())
    marks = thresholds(limits_of(cfg), {"duplicate_distance": cfg.duplicate.max_distance})
    write_histograms(out / "histograms", records, marks)
    atomic_write_bytes(out / "report.md", report_markdown(records, len(sources), marks).encode())
    kept = sum(r.keep for r in records)
    log.info("%d clips, %d kept -> %s", sum(r.error is None for r in records), kept, out / "manifest.jsonl")
    return records


def run(cfg: DictConfig) -> Path:
    try:
        sources = validate(cfg)
    except ConfigError as ex:  # exiting here keeps Hydra's job runner from adding its own report lines
        print(f"error: {ex}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(cfg.out).expanduser().resolve()
    write_run_record(cfg, out)
    curate(cfg, sources, out)
    return out / "manifest.jsonl"
