"""Weight-free clip measurements: optical-flow motion, changed pixels, black borders, burnt-in text,
perceptual hashes. Each takes a clip's frames (uint8 RGB) and returns plain numbers, so workers can
send them back cheaply and the manifest stays deterministic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (RGB a, RGB b) -> (H, W, 2) flow in pixels


def grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def spread(count: int, n: int) -> list[int]:
    """`n` indices spread evenly over range(count) (centres of n equal parts); all of them when count <= n."""
    if count <= n:
        return list(range(count))
    return [int((i + 0.5) * count / n) for i in range(n)]


def opencv_flow(method: str) -> FlowFn:
    """Dense flow without weights: Farneback, or DIS (faster, better at large motion)."""
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda a, b: dis.calc(grey(a), grey(b), None)
    if method == "farneback":
        return lambda a, b: cv2.calcOpticalFlowFarneback(grey(a), grey(b), None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise ValueError(f"motion.method: unknown flow method {method!r}")


def motion(frames: Sequence[np.ndarray], flow: FlowFn, pairs: int, percentile: float, scale: float) -> float:
    """Mean over up to `pairs` consecutive frame pairs of a high percentile of |flow|, in px/frame times `scale`
    (reference height / analysed height). AniSora takes the max (percentile 100) at 480 px high; a high
    percentile keeps small moving characters while ignoring single-pixel flow outliers."""
    if len(frames) < 2:
        return 0.0
    values = []
    for i in spread(len(frames) - 1, pairs):
        f = flow(frames[i], frames[i + 1])
        magnitude = np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)
        values.append(float(np.percentile(magnitude, percentile)))
    return float(np.mean(values)) * scale


def changed_fraction(frames: Sequence[np.ndarray], samples: int, pixel_delta: float) -> float:
    """Mean share of pixels whose grey level moves by more than `pixel_delta` between successive samples
    spread over the clip: about 0 for frozen frames and stills under coding noise."""
    if len(frames) < 2:
        return 0.0
    idx = sorted(set(spread(len(frames), samples - 1) + [len(frames) - 1]))
    greys = [grey(frames[i]).astype(np.int16) for i in idx]
    shares = [float(np.mean(np.abs(b - a) > pixel_delta)) for a, b in zip(greys, greys[1:])]
    return float(np.mean(shares)) if shares else 0.0


def _dark_run(values: np.ndarray, luma: float) -> int:
    """Length of the leading run of values below `luma`."""
    dark = values < luma
    return int(len(dark) if dark.all() else np.argmin(dark))


def border_fraction(frames: Sequence[np.ndarray], samples: int, luma: float) -> float:
    """Share of the frame area outside the picture: edge rows/columns whose 98th-percentile luma stays below
    `luma` in every sampled frame (letterbox bars top/bottom, pillarbox bars left/right)."""
    picked = [grey(frames[i]) for i in spread(len(frames), samples)]
    stack = np.stack(picked).astype(np.float32)  # (S, H, W)
    rows = np.percentile(stack, 98, axis=2).max(axis=0)  # (H,)
    cols = np.percentile(stack, 98, axis=1).max(axis=0)  # (W,)
    h, w = len(rows), len(cols)
    top = _dark_run(rows, luma)
    if top == h:
        return 1.0
    bottom = _dark_run(rows[::-1], luma)
    left, right = _dark_run(cols, luma), _dark_run(cols[::-1], luma)
    inner = max(h - top - bottom, 0) * max(w - left - right, 0)
    return float(1.0 - inner / (h * w))


def _stands_out(grey_img: np.ndarray, labels: np.ndarray, i: int, box: tuple[int, int, int, int],
                sign: float) -> bool:
    """The stroke differs from the pixels right around it by >= 50 grey levels (an outline or a plain
    background); fragments of a bright fill that the top-hat cut out blend into their surroundings."""
    x, y, bw, bh = box
    y0, x0 = max(y - 2, 0), max(x - 2, 0)
    mask = (labels[y0 : y + bh + 2, x0 : x + bw + 2] == i).astype(np.uint8)
    ring = cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool) & ~mask.astype(bool)
    patch = grey_img[y0 : y + bh + 2, x0 : x + bw + 2].astype(np.float32)
    return bool(ring.any()) and sign * (patch[mask.astype(bool)].mean() - patch[ring].mean()) >= 50


def _glyphs(strokes: np.ndarray, grey_img: np.ndarray, sign: float) -> np.ndarray:
    """(x, y, w, h, glyphs) of connected components sized like characters. A wider component counts as
    several glyphs when strokes cross its middle rows often enough (letters that touch at low resolution);
    a bar or a long outline, crossed once or twice, counts as none."""
    h = grey_img.shape[0]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(strokes.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, count):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        if not max(3, 0.025 * h) <= bh <= 0.15 * h or bw > 0.9 * grey_img.shape[1]:
            continue
        if not _stands_out(grey_img, labels, i, (x, y, bw, bh), sign):
            continue
        if bw <= 2.5 * bh:
            out.append((x, y, bw, bh, 1.0))
            continue
        rows = labels[y + max(bh // 2 - 1, 0) : y + bh // 2 + 2, x : x + bw] == i
        crossings = float(np.mean(np.sum(np.diff(rows.astype(np.int8), axis=1) == 1, axis=1)))
        if crossings >= 0.8 * bw / bh:
            out.append((x, y, bw, bh, crossings / 1.5))
    return np.array(out, dtype=np.float64).reshape(-1, 5)


def _lines(boxes: np.ndarray, min_glyphs: int) -> list[tuple[int, int, int, int]]:
    """Group glyph boxes into text lines: centres at one height, similar sizes, small gaps."""
    order = np.argsort(boxes[:, 0], kind="stable")
    boxes = boxes[order]
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (xi, yi, wi, hi, _) in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            xj, yj, wj, hj, _ = boxes[j]
            tallest = max(hi, hj)
            if xj - (xi + wi) > 1.2 * tallest:
                break  # sorted by x: every later box is further away
            if abs((yi + hi / 2) - (yj + hj / 2)) <= 0.5 * tallest and max(hi, hj) <= 2.5 * min(hi, hj):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        if boxes[members, 4].sum() < min_glyphs:
            continue
        b = boxes[members]
        x0, y0 = b[:, 0].min(), b[:, 1].min()
        out.append((int(x0), int(y0), int((b[:, 0] + b[:, 2]).max() - x0), int((b[:, 1] + b[:, 3]).max() - y0)))
    return out


# (morphology, grey-level test): bright strokes are near-white or yellow, dark ones near-black.
POLARITIES = {"bright": ((cv2.MORPH_TOPHAT, lambda g: g >= 170, 1.0),),
              "dark": ((cv2.MORPH_BLACKHAT, lambda g: g <= 85, -1.0),)}
POLARITIES["both"] = POLARITIES["bright"] + POLARITIES["dark"]


def text_mask(frame_grey: np.ndarray, polarity: str = "bright", min_glyphs: int = 3) -> np.ndarray:
    """Boxes of text lines in one frame (bool H x W).

    Burnt-in text is a row of small high-contrast glyphs: thin bright strokes (white or yellow subtitles
    with a dark outline, `polarity="bright"`) or thin dark ones ("dark"; off by default, because broken cel
    outlines are dark strokes too). A top-hat (black-hat) with a window wider than a stroke keeps exactly
    such strokes; components sized like characters (2.5-15 % of the frame height) that line up at one
    height with small gaps make a line. Props and horizons are large, so they fail the size test, and a
    lone highlight has no neighbours.
    """
    h, w = frame_grey.shape
    k = max(3, int(round(0.08 * h)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    mask = np.zeros((h, w), dtype=bool)
    for op, level, sign in POLARITIES[polarity]:
        strokes = (cv2.morphologyEx(frame_grey, op, kernel) > 60) & level(frame_grey)
        for x, y, bw, bh in _lines(_glyphs(strokes, frame_grey, sign), min_glyphs):
            mask[y : y + bh, x : x + bw] = True
    return mask


def text_coverage(frames: Sequence[np.ndarray], persistence: float, polarity: str = "bright") -> float:
    """Share of the frame area that `text_mask` marks in at least `persistence` of the frames: subtitles
    and captions stay put while the animation under them moves."""
    if not frames:
        return 0.0
    masks = np.stack([text_mask(grey(f), polarity) for f in frames]).astype(np.float32)
    return float(np.mean(masks.mean(axis=0) >= max(persistence, 1e-6)))


def phash(frame: np.ndarray) -> int:
    """64-bit DCT perceptual hash: the 8x8 lowest frequencies of a 32x32 grey thumbnail against their median."""
    small = cv2.resize(grey(frame), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def clip_hashes(frames: Sequence[np.ndarray], samples: int) -> list[str]:
    """Hashes of `samples` frames at fixed relative positions, so the same shot hashes alike wherever it is."""
    positions = [int((i + 0.5) * len(frames) / samples) for i in range(samples)]  # repeats in very short clips
    return [f"{phash(frames[i]):016x}" for i in positions]


def mean_colour(frames: Sequence[np.ndarray], samples: int) -> list[float]:
    picked = [frames[i] for i in spread(len(frames), samples)]
    return [round(float(v), 2) for v in np.mean([f.reshape(-1, 3).mean(axis=0) for f in picked], axis=0)]
