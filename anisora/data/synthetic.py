"""The tiny anime world: procedural cel-shaded clips with a moving outlined sprite.

Every clip is a pure function of (seed, split, index), so training streams, the validation
clips and the held-out benchmark are reproducible on any machine, and the benchmark split is
drawn from a seed stream that training never touches. Each clip keeps its ground truth
(direction, speed, sprite track, colour) so evaluation can check motion against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
SPLITS: dict[str, int] = {"train": 0, "val": 1, "benchmark": 2}

# Saturated sprite colours, far (in RGB) from the muted background palette so trackers can find them.
SPRITE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (228, 52, 52),
    "blue": (48, 92, 232),
    "green": (40, 184, 72),
    "yellow": (244, 212, 36),
    "purple": (156, 64, 204),
    "orange": (248, 136, 28),
}
SUBJECTS: dict[str, str] = {"slime": "disc", "crystal": "diamond", "onigiri": "triangle", "block": "square"}
SCENES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # scene: (upper colour, lower colour); muted tones so sprites stand out.
    "meadow": ((168, 196, 220), (120, 150, 110)),
    "dusk": ((200, 160, 170), (110, 100, 130)),
    "night": ((52, 60, 92), (70, 76, 70)),
    "classroom": ((206, 196, 170), (150, 120, 96)),
}
AESTHETIC_LEVELS: tuple[float, ...] = (4.5, 5.5, 6.5)
MOTION_SCORE_LEVELS: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0)
OUTLINE = np.array([24, 20, 32], dtype=np.float32)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class WorldConfig:
    """Size of the world's clips and of its sprites."""

    num_frames: int = 17
    height: int = 32
    width: int = 32
    sprite_size: int = 9
    margin: int = 1
    slowest_speed: float = 1 / 3  # speed at the lowest motion score, as a fraction of the fastest


@dataclass
class ClipTruth:
    """What really happens in a clip: used by evaluation, never shown to the model."""

    direction: str
    speed: float  # pixels per frame
    motion_score: float
    aesthetic_score: float
    subject: str
    colour: str
    colour_rgb: tuple[int, int, int]
    scene: str
    sprite_size: int
    track: np.ndarray = field(repr=False)  # (F, 2) sprite centre (x, y) in pixels

    def to_json(self) -> dict:
        out = asdict(self)
        out["track"] = np.round(self.track, 3).tolist()
        out["colour_rgb"] = list(self.colour_rgb)
        return out


@dataclass
class SyntheticClip:
    video: np.ndarray  # (F, H, W, 3) uint8
    caption: str
    truth: ClipTruth


def caption_for(subject: str, colour: str, direction: str, scene: str, aesthetic: float, motion: float) -> str:
    """The caption template; it ends with AniSora's score suffix."""
    return (
        f"a {colour} {subject} moves {direction} across the {scene}. "
        f"aesthetic score: {aesthetic:.1f}. motion score: {motion:.1f}."
    )


def max_speed(cfg: WorldConfig, axis_length: int) -> float:
    """Fastest speed (px/frame) at which the sprite stays inside the frame for the whole clip."""
    room = axis_length - cfg.sprite_size - 2 * cfg.margin
    return room / max(cfg.num_frames - 1, 1)


def speed_for_motion_score(cfg: WorldConfig, motion_score: float) -> float:
    """Documented mapping: the top motion score crosses the shorter frame side, the lowest moves at
    `slowest_speed` of that, and speed is linear in the score in between."""
    lo, hi = MOTION_SCORE_LEVELS[0], MOTION_SCORE_LEVELS[-1]
    fraction = cfg.slowest_speed + (1.0 - cfg.slowest_speed) * (motion_score - lo) / (hi - lo)
    return fraction * max_speed(cfg, min(cfg.height, cfg.width))


def _background(rng: np.random.Generator, cfg: WorldConfig, scene: str, aesthetic: float) -> np.ndarray:
    upper, lower = (np.array(c, dtype=np.float32) for c in SCENES[scene])
    h, w = cfg.height, cfg.width
    img = np.empty((h, w, 3), dtype=np.float32)
    horizon = int(rng.integers(h // 2, 3 * h // 4))
    img[:horizon] = upper
    img[horizon:] = lower
    if aesthetic >= 5.5:  # cel-shaded bands: quantised sky gradient, darker ground band
        bands = int(rng.integers(2, 4))
        for b in range(bands):
            y0 = b * horizon // bands
            img[y0:horizon] = upper * (1.0 - 0.06 * b)
        img[horizon + (h - horizon) // 2 :] = lower * 0.85
    if aesthetic >= 6.5:  # a hill with a hard cel edge
        xs = np.arange(w, dtype=np.float32)
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 4.0)
        ridge = horizon - amp * (1 + np.sin(xs / w * 2 * np.pi + phase))
        ys = np.arange(h, dtype=np.float32)[:, None]
        hill = (ys >= ridge[None, :]) & (ys < horizon)
        img[hill] = lower * 1.08
    return img


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Supersampled fill mask of a sprite shape, inside a (size*S)^2 box."""
    n = size * SUPERSAMPLE
    c = (n - 1) / 2.0
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    dx, dy = (x - c) / (n / 2.0), (y - c) / (n / 2.0)
    if shape == "disc":
        return dx**2 + dy**2 <= 0.9
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 0.95
    if shape == "triangle":
        return (dy <= 0.9) & (dy >= -0.95 + 1.9 * np.abs(dx))
    return (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)


@lru_cache(maxsize=64)
def _sprite_layers(shape: str, size: int, highlight: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage (alpha), outline weight and highlight weight of one sprite, supersampled."""
    fill = _shape_mask(shape, size)
    pad = SUPERSAMPLE
    padded = np.pad(fill, pad)
    grown = np.zeros_like(padded)
    for oy in range(-pad, pad + 1):
        for ox in range(-pad, pad + 1):
            if ox * ox + oy * oy <= pad * pad:
                grown |= np.roll(np.roll(padded, oy, axis=0), ox, axis=1)
    alpha = grown.astype(np.float32)
    outline = (grown & ~padded).astype(np.float32)
    spot = np.zeros_like(alpha)
    if highlight:
        n = padded.shape[0]
        y, x = np.mgrid[0:n, 0:n].astype(np.float32)
        spot = (((x - 0.35 * n) ** 2 + (y - 0.35 * n) ** 2) <= (0.12 * n) ** 2) & padded
        spot = spot.astype(np.float32)
    return alpha, outline, spot


def _paste(frame: np.ndarray, layers: tuple[np.ndarray, np.ndarray, np.ndarray], rgb: np.ndarray,
           cx: float, cy: float) -> None:
    """Composite a supersampled sprite centred at (cx, cy) with sub-pixel accuracy (box filter)."""
    alpha, outline, spot = layers
    n = alpha.shape[0]
    half = n / (2.0 * SUPERSAMPLE)
    x0f, y0f = cx + 0.5 - half, cy + 0.5 - half  # top-left corner of the sprite box in pixels
    x0, y0 = int(np.floor(x0f)), int(np.floor(y0f))
    sx, sy = int(round((x0f - x0) * SUPERSAMPLE)), int(round((y0f - y0) * SUPERSAMPLE))
    cells = n // SUPERSAMPLE + 1
    canvas = np.zeros((3, cells * SUPERSAMPLE, cells * SUPERSAMPLE), dtype=np.float32)
    canvas[0, sy : sy + n, sx : sx + n] = alpha
    canvas[1, sy : sy + n, sx : sx + n] = outline
    canvas[2, sy : sy + n, sx : sx + n] = spot
    pooled = canvas.reshape(3, cells, SUPERSAMPLE, cells, SUPERSAMPLE).mean(axis=(2, 4))
    h, w = frame.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + cells, h)), slice(max(x0, 0), min(x0 + cells, w))
    py, px = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
    a, o, s = (pooled[i, py, px][..., None] for i in range(3))
    body = rgb * (1 - o / np.maximum(a, 1e-6)) + OUTLINE * (o / np.maximum(a, 1e-6))
    body = body * (1 - s) + np.minimum(rgb + 70.0, 255.0) * s
    region = frame[ys, xs]
    frame[ys, xs] = region * (1 - a) + body * a


def make_clip(cfg: WorldConfig, seed: int, split: str = "train", index: int = 0,
              motion_score: float | None = None, direction: str | None = None,
              colour: str | None = None) -> SyntheticClip:
    """Render clip `index` of `split`; `motion_score`/`direction`/`colour` pin those draws (for benchmarks)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {sorted(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    subject = str(rng.choice(list(SUBJECTS)))
    colour_drawn = str(rng.choice(list(SPRITE_COLOURS)))
    scene = str(rng.choice(list(SCENES)))
    drawn_direction = str(rng.choice(DIRECTIONS))
    drawn_motion = float(rng.choice(MOTION_SCORE_LEVELS))
    aesthetic = float(rng.choice(AESTHETIC_LEVELS))
    direction = direction or drawn_direction
    colour = colour or colour_drawn
    motion = drawn_motion if motion_score is None else float(motion_score)
    speed = speed_for_motion_score(cfg, motion)

    vx, vy = DIRECTION_VECTORS[direction]
    travel = speed * (cfg.num_frames - 1)
    lo = cfg.margin + cfg.sprite_size / 2.0
    hi_x, hi_y = cfg.width - lo, cfg.height - lo
    if travel > min(hi_x, hi_y) - lo + 1e-6:
        raise ValueError(f"motion_score {motion} moves the sprite out of a {cfg.height}x{cfg.width} frame")

    def start(hi: float, v: float) -> float:
        if v > 0:
            return rng.uniform(lo, hi - travel)
        if v < 0:
            return rng.uniform(lo + travel, hi)
        return rng.uniform(lo, hi)

    x0, y0 = start(hi_x, vx), start(hi_y, vy)
    t = np.arange(cfg.num_frames, dtype=np.float32)
    track = np.stack([x0 + vx * speed * t, y0 + vy * speed * t], axis=1)

    background = _background(rng, cfg, scene, aesthetic)
    rgb = np.array(SPRITE_COLOURS[colour], dtype=np.float32)
    layers = _sprite_layers(SUBJECTS[subject], cfg.sprite_size, highlight=aesthetic >= 5.5)
    video = np.empty((cfg.num_frames, cfg.height, cfg.width, 3), dtype=np.uint8)
    for f in range(cfg.num_frames):
        frame = background.copy()
        _paste(frame, layers, rgb, float(track[f, 0]), float(track[f, 1]))
        video[f] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)

    truth = ClipTruth(direction=direction, speed=float(speed), motion_score=motion, aesthetic_score=aesthetic,
                      subject=subject, colour=colour, colour_rgb=SPRITE_COLOURS[colour], scene=scene,
                      sprite_size=cfg.sprite_size, track=track)
    return SyntheticClip(video=video, caption=caption_for(subject, colour, direction, scene, aesthetic, motion),
                         truth=truth)


def benchmark_clips(cfg: WorldConfig, seed: int, count: int) -> list[SyntheticClip]:
    """The held-out benchmark: balanced over directions, drawn from the benchmark seed stream."""
    return [make_clip(cfg, seed, "benchmark", i, direction=DIRECTIONS[i % len(DIRECTIONS)]) for i in range(count)]
