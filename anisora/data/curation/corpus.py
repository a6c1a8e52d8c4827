"""Synthetic long videos with known ground truth, for curation tests and benchmarks.

Each video is a sequence of anime-like shots (flat two-tone backgrounds with cel props, outlined sprites
from `anisora.data.synthetic` moving across them); consecutive shots use far-apart hues so every cut is
real. Some shots are planted: static (nothing moves), burnt-in text (a subtitle drawn with
cv2.putText over the moving content), letterboxed (black bars top and bottom) or a duplicate (an
earlier shot rendered again, in a later video encoded at another quality). `CorpusTruth` says which.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from anisora.data.synthetic import OUTLINE, SPRITE_COLOURS, SUBJECTS, _paste, _sprite_layers
from anisora.io import atomic_write

KINDS = ("normal", "static", "text", "letterbox", "duplicate")
WORDS = ("hello", "where", "are you", "going", "tonight", "come back", "wait", "I know", "the sky", "sorry")


@dataclass
class ShotTruth:
    start: int  # first frame in its video
    end: int  # exclusive
    kind: str  # one of KINDS
    uid: str  # "<video stem>:<shot index>"
    duplicate_of: str | None = None  # uid of the shot this one repeats


@dataclass
class VideoTruth:
    path: str
    fps: int
    height: int
    width: int
    crf: int
    shots: list[ShotTruth] = field(default_factory=list)

    @property
    def cuts(self) -> list[int]:
        return [s.start for s in self.shots[1:]]


@dataclass
class CorpusTruth:
    videos: list[VideoTruth]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CorpusTruth:
        videos = json.loads(text)["videos"]
        return cls([VideoTruth(**{**v, "shots": [ShotTruth(**s) for s in v["shots"]]}) for v in videos])

    def shots(self) -> list[tuple[VideoTruth, ShotTruth]]:
        return [(v, s) for v in self.videos for s in v.shots]


@dataclass(frozen=True)
class ShotPlan:
    seed: int
    frames: int
    hue: float
    kind: str


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _background(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    """Sky and ground in one hue, plus a few outlined flat props: a cel-painted set."""
    img = np.empty((h, w, 3), dtype=np.float32)
    horizon = int(rng.uniform(0.4, 0.7) * h)
    img[:horizon] = _rgb(hue, rng.uniform(0.25, 0.45), rng.uniform(0.75, 0.9))
    img[horizon:] = _rgb(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.35, 0.55), rng.uniform(0.5, 0.65))
    line = max(1, h // 120)
    for _ in range(int(rng.integers(2, 4))):
        fill = _rgb(hue + rng.uniform(0.1, 0.3), rng.uniform(0.3, 0.6), rng.uniform(0.55, 0.85))
        colour = tuple(float(c) for c in fill)
        cx, cy = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.2, 0.8) * h)
        rx, ry = int(rng.uniform(0.06, 0.16) * w), int(rng.uniform(0.08, 0.2) * h)
        if rng.random() < 0.5:
            cv2.rectangle(img, (cx - rx, cy - ry), (cx + rx, cy + ry), colour, -1)
            cv2.rectangle(img, (cx - rx, cy - ry), (cx + rx, cy + ry), tuple(float(c) for c in OUTLINE), line)
        else:
            cv2.ellipse(img, (cx, cy), (rx, ry), 0, 0, 360, colour, -1)
            cv2.ellipse(img, (cx, cy), (rx, ry), 0, 0, 360, tuple(float(c) for c in OUTLINE), line)
    return img


def _subtitle(frame: np.ndarray, text: str) -> None:
    """White text with a dark outline near the bottom, the way fansubs and broadcasts burn it in."""
    h, w = frame.shape[:2]
    scale, thick = h / 200.0, max(1, int(round(h / 120)))
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    glyphs = np.zeros((h, w), dtype=np.uint8)
    cv2.putText(glyphs, text, ((w - tw) // 2, int(h * 0.88)), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick,
                cv2.LINE_AA)
    ring = max(1, int(round(h / 160)))
    outline = cv2.dilate(glyphs, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1)))
    for mask, colour in ((outline, 16.0), (glyphs, 250.0)):
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        frame[:] = np.rint(frame * (1 - alpha) + colour * alpha).astype(np.uint8)


def render_shot(plan: ShotPlan, height: int, width: int) -> np.ndarray:
    """uint8 (F, H, W, 3) frames of one shot: a pure function of the plan and the size."""
    rng = np.random.default_rng([plan.seed, 7])
    background = _background(rng, height, width, plan.hue)
    size = max(5, int(round(height * rng.uniform(0.16, 0.24))))
    sprites = []
    for _ in range(int(rng.integers(1, 3))):
        subject = str(rng.choice(list(SUBJECTS.values())))
        colour = np.array(SPRITE_COLOURS[str(rng.choice(list(SPRITE_COLOURS)))], dtype=np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        speed = 0.0 if plan.kind == "static" else height * rng.uniform(0.012, 0.03)  # 1.4-3.6 px/frame at 120 px
        sprites.append((_sprite_layers(subject, size, True), colour,
                        np.array([rng.uniform(size, width - size), rng.uniform(size, height - size)]),
                        speed * np.array([np.cos(angle), np.sin(angle)])))
    words = str(rng.choice(WORDS)) + " " + str(rng.choice(WORDS))
    bar = int(round(height * 0.125))
    frames = np.empty((plan.frames, height, width, 3), dtype=np.uint8)
    lo, hi = np.array([size / 2, size / 2]), np.array([width - size / 2, height - size / 2])
    for t in range(plan.frames):
        frame = background.copy()
        for layers, colour, p0, v in sprites:
            p = p0 + v * t  # bounce off the frame edges
            span = hi - lo
            p = lo + np.abs((p - lo + span) % (2 * span) - span)
            _paste(frame, layers, colour, float(p[0]), float(p[1]))
        out = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        if plan.kind == "text":
            _subtitle(out, words)
        if plan.kind == "letterbox":
            out[:bar] = 0
            out[height - bar:] = 0
        frames[t] = out
    return frames


def write_h264(path: Path, frames_iter, fps: int, height: int, width: int, crf: int) -> Path:
    """H.264 (yuv420p) mp4, frames streamed in, written atomically. The index is at the end of the file
    (no faststart), like most camera and encoder output, so a truncated copy is unreadable."""
    def write(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            for frame in frames_iter:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())

    return atomic_write(path, write)


def plan_corpus(videos: int, shots_per_video: int, fps: int, seed: int, min_s: float = 2.2,
                max_s: float = 3.6) -> list[list[ShotPlan]]:
    """Shot plans per video. Planted kinds come in fixed counts (each about a sixth of the shots, no
    duplicates in the first video); a duplicate repeats an earlier normal shot that is not its neighbour."""
    rng = np.random.default_rng([seed, 1])
    total = videos * shots_per_video
    per_kind = total // 6
    duplicates = min(per_kind, total - shots_per_video)
    kinds = ["static"] * per_kind + ["text"] * per_kind + ["letterbox"] * per_kind
    kinds += ["normal"] * (total - len(kinds) - duplicates)
    order = [str(k) for k in rng.permutation(kinds)]
    if duplicates:
        slots = rng.choice(np.arange(shots_per_video, total), size=duplicates, replace=False)
        for slot in sorted(slots.tolist()):
            order.insert(slot, "duplicate")
    plans: list[ShotPlan] = []
    hue = float(rng.uniform())
    for i, kind in enumerate(order[:total]):
        hue = ((plans[-1].hue if plans else hue) + rng.uniform(0.3, 0.7)) % 1.0
        frames = int(round(rng.uniform(min_s, max_s) * fps))
        plan = ShotPlan(seed=int(rng.integers(1 << 30)), frames=frames, hue=hue, kind=kind)
        if kind == "duplicate":
            candidates = [j for j, p in enumerate(plans) if p.kind == "normal" and j < i - 1
                          and abs(p.hue - plans[-1].hue) > 0.15]
            original = plans[int(rng.choice(candidates))] if candidates else None
            plan = ShotPlan(original.seed, original.frames, original.hue, "duplicate") if original else \
                ShotPlan(plan.seed, frames, hue, "normal")
        plans.append(plan)
    return [plans[v * shots_per_video:(v + 1) * shots_per_video] for v in range(videos)]


def make_corpus(folder: Path | str, videos: int = 4, shots_per_video: int = 8, height: int = 120, width: int = 160,
                fps: int = 12, seed: int = 0, crfs: tuple[int, ...] = (18, 26, 22, 30)) -> CorpusTruth:
    """Write video_000.mp4 ... into `folder` and return the ground truth (`CorpusTruth.to_json` saves it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(videos, shots_per_video, fps, seed)
    first_seen: dict[int, str] = {}
    truth = CorpusTruth([])
    for v, video_plans in enumerate(plans):
        path = folder / f"video_{v:03d}.mp4"
        crf = crfs[v % len(crfs)]
        video = VideoTruth(str(path.resolve()), fps, height, width, crf)
        start = 0
        for i, plan in enumerate(video_plans):
            uid = f"{path.stem}:{i}"
            original = first_seen.get(plan.seed) if plan.kind == "duplicate" else None
            video.shots.append(ShotTruth(start, start + plan.frames, plan.kind, uid, original))
            first_seen.setdefault(plan.seed, uid)
            start += plan.frames
        write_h264(path, (f for p in video_plans for f in render_shot(p, height, width)), fps, height, width, crf)
        truth.videos.append(video)
    return truth


FILTER_REASONS = {"static": "change", "text": "text", "letterbox": "border", "duplicate": "duplicate_of"}


def _precision_recall(true_positive: int, predicted: int, actual: int) -> dict[str, float]:
    return {"precision": true_positive / predicted if predicted else 1.0,
            "recall": true_positive / actual if actual else 1.0,
            "true_positive": true_positive, "predicted": predicted, "actual": actual}


def evaluate(truth: CorpusTruth, records: list, tolerance: int = 2) -> dict[str, dict[str, float]]:
    """Precision and recall of shot boundaries (a found cut within `tolerance` frames of a true one) and of
    each filter's rejections (a clip is matched to the true shot it overlaps most; a duplicate counts
    only when its reason names the clip of the true original)."""
    by_source: dict[str, list] = {}
    for r in records:
        if r.error is None:
            by_source.setdefault(r.source, []).append(r)
    found_total = matched = 0
    true_total = sum(len(v.cuts) for v in truth.videos)
    clip_of: dict[str, object] = {}
    owner: dict[str, ShotTruth] = {}
    for video in truth.videos:
        clips = sorted(by_source.get(video.path, []), key=lambda r: r.start_frame)
        found = [c.start_frame for c in clips[1:]]
        found_total += len(found)
        free = list(video.cuts)
        for cut in found:
            near = [t for t in free if abs(t - cut) <= tolerance]
            if near:
                free.remove(min(near, key=lambda t: abs(t - cut)))
                matched += 1
        for clip in clips:
            overlap = [(min(clip.end_frame, s.end) - max(clip.start_frame, s.start), s) for s in video.shots]
            best = max(overlap, key=lambda o: o[0])[1]
            owner[clip.id] = best
            clip_of.setdefault(best.uid, clip)
    result = {"shots": _precision_recall(matched, found_total, true_total)}
    planted = [s for _, s in truth.shots()]
    clips = [c for cs in by_source.values() for c in cs if c.id in owner]
    for kind, reason in FILTER_REASONS.items():
        flagged = [c for c in clips if any(x.startswith(reason) for x in c.reasons)]
        hits = 0
        for c in flagged:
            shot = owner[c.id]
            if shot.kind != kind:
                continue
            if kind == "duplicate":
                original = clip_of.get(shot.duplicate_of)
                if original is None or f"duplicate_of:{original.id}" not in c.reasons:
                    continue
            hits += 1
        result[kind] = _precision_recall(hits, len(flagged), sum(s.kind == kind for s in planted))
    return result
