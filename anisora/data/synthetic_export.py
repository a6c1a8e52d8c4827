"""The synthetic world as files: lossless videos plus the manifest.jsonl `anisora-data encode` reads.

This lets the whole data path (source files -> manifest -> encode -> shards -> training) run on clips
whose content and captions are known exactly, without the curation step. Videos are FFV1 in Matroska
(RGB, lossless), so decoding gives back the rendered uint8 frames bit for bit. Several clips may share
one file (`clips_per_file`), as clips cut from one episode do; each manifest line then names its frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from anisora.data.manifest import ClipRecord
from anisora.data.synthetic import WorldConfig, make_clip
from anisora.io import atomic_write_bytes, atomic_write_text

LOSSLESS_CODEC, LOSSLESS_PIX_FMT, CONTAINER = "ffv1", "bgr0", "matroska"


def write_lossless(path: Path, frames: np.ndarray, fps: int) -> Path:
    """uint8 (F, H, W, 3) -> an FFV1 .mkv that decodes to the same bytes (written atomically)."""
    import io

    _, h, w, _ = frames.shape
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=CONTAINER) as container:
        stream = container.add_stream(LOSSLESS_CODEC, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, LOSSLESS_PIX_FMT
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(rgb.reformat(format=LOSSLESS_PIX_FMT)))
        container.mux(stream.encode())
    return atomic_write_bytes(path, buffer.getvalue())


def export_world(out: Path | str, world: WorldConfig, seed: int, count: int, split: str = "train",
                 fps: int = 8, clips_per_file: int = 1, start: int = 0) -> Path:
    """Clips `start .. start+count-1` of `split` -> `out/videos/*.mkv` and `out/manifest.jsonl` (returned).

    Each record keeps the clip's synthetic caption, `keep=True`, and the clip's index and truth under
    `scores`/`synthetic` so a reader can map a shard sample back to the world."""
    out = Path(out)
    records: list[str] = []
    for first in range(start, start + count, clips_per_file):
        indices = range(first, min(first + clips_per_file, start + count))
        clips = [make_clip(world, seed, split, i) for i in indices]
        path = (out / "videos" / f"{split}_{first:07d}.mkv").resolve()
        write_lossless(path, np.concatenate([c.video for c in clips]), fps)
        for k, (index, clip) in enumerate(zip(indices, clips)):
            f0 = k * world.num_frames
            record = ClipRecord(source=str(path), start_frame=f0, end_frame=f0 + world.num_frames, fps=float(fps),
                                width=world.width, height=world.height, keep=True, caption=clip.caption,
                                scores={"aesthetic": clip.truth.aesthetic_score, "motion": clip.truth.motion_score,
                                        "synthetic_index": float(index)})
            records.append(record.to_json())
    atomic_write_bytes(out / "manifest.jsonl", ("\n".join(records) + "\n").encode())
    atomic_write_text(out / "world.json", json.dumps({"world": world.__dict__, "seed": seed, "split": split,
                                                      "start": start, "count": count}, indent=2) + "\n")
    return out / "manifest.jsonl"
