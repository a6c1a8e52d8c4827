"""Latent encoding: kept manifest clips -> webdataset shards of latents, embeddings and guide conditioning.

Precompute once: training on real backbones then reads these shards and never runs the VAE, the text
encoder or the image encoder. The plan is a pure function of the manifest and the config: clip i of the
kept clips goes to shard i // n (n fixed per dataset from the sample size and the shard bounds), shard k
belongs to rank k % world_size, a shard is complete once its tar and its index file exist, and every
byte of a shard is reproducible, so a killed encode is simply run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from anisora.backbones.base import BackboneAdapter
from anisora.config.errors import ConfigError
from anisora.data.clip_source import ClipFormat, ClipReadError, SourceReader
from anisora.data.manifest import ClipRecord
from anisora.data.shard_format import (
    DATASET_INFO,
    GUIDE_PREFIX,
    IMAGE_PREFIX,
    LATENTS,
    META,
    NO_GUIDE,
    NULL_TEXT,
    TEXT,
    encode_sample,
    member_size,
    tensor_bytes,
    write_tar,
)
from anisora.guidance.pair import pair_from_video
from anisora.guidance.spec import STORED_MODE_FRAMES, stored_mode_indices
from anisora.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger("anisora.encode")

META_ALLOWANCE = 4096  # bytes reserved per sample for meta.json when sizing shards
TEXT_BATCH = 16  # captions per text-encoder call


@dataclass(frozen=True)
class EncodeSettings:
    fmt: ClipFormat
    guides: tuple[str, ...]  # stored guide modes besides the no-guide one
    dtype: torch.dtype  # stored dtype of every tensor
    max_samples: int
    max_bytes: int
    seed: int = 0


def check_guides(guides: Sequence[str], key: str = "guides") -> tuple[str, ...]:
    for i, mode in enumerate(guides):
        if mode not in STORED_MODE_FRAMES:
            raise ConfigError(f"{key}[{i}]", f"expected one of {', '.join(STORED_MODE_FRAMES)}; got {mode!r}")
    if len(set(guides)) != len(guides):
        raise ConfigError(key, f"lists a mode twice: {list(guides)}")
    return tuple(guides)


def stored_guides(backbone: BackboneAdapter, guides: tuple[str, ...]) -> tuple[str, ...]:
    """Text-to-video families take no guide: only the (empty) no-guide conditioning is stored for them."""
    return guides if getattr(backbone, "uses_guides", True) else ()


def trains_text_encoder(backbone: BackboneAdapter) -> bool:
    return any(m is not backbone.denoiser for m in backbone.trainable_modules())


def clip_seed(record: ClipRecord, seed: int) -> int:
    """Seeds stochastic encoders (CogVideoX samples its VAE latents) from the clip id: reruns are identical."""
    return (int(hashlib.sha1(record.id.encode()).hexdigest()[:12], 16) + seed) % 2**63


def _device_of(backbone: BackboneAdapter) -> torch.device:
    for module in backbone.encoding_modules():
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


class ClipEncoder:
    """One backbone's encoders applied to clips: latents, caption embedding, guide conditioning per mode."""

    def __init__(self, backbone: BackboneAdapter, settings: EncodeSettings) -> None:
        self.backbone, self.settings = backbone, settings
        self.device = _device_of(backbone)
        self.guides = stored_guides(backbone, settings.guides)
        self.store_text = not trains_text_encoder(backbone)

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to("cpu", self.settings.dtype)

    @torch.no_grad()
    def unconditional(self) -> dict[str, torch.Tensor]:
        """Clip-independent parts, stored once per dataset: the empty-prompt embedding and the no-guide
        conditioning (G = 0, M = 0)."""
        f, h, w = self.settings.fmt.num_frames, self.settings.fmt.height, self.settings.fmt.width
        g = torch.zeros(1, 3, f, h, w, device=self.device)
        m = torch.zeros(1, f, h, w, device=self.device)
        out = {NULL_TEXT: self._store(self.backbone.encode_prompt([""])[0]),
               f"{GUIDE_PREFIX}{NO_GUIDE}.pth": self._store(self.backbone.condition(g, m)[0])}
        image = self.backbone.encode_image(g, m)
        if image is not None:
            out[f"{IMAGE_PREFIX}{NO_GUIDE}.pth"] = self._store(image[0])
        return out

    @torch.no_grad()
    def captions(self, records: Sequence[ClipRecord]) -> list[torch.Tensor | None]:
        """Caption embeddings, TEXT_BATCH prompts per encoder call (None when the model trains its encoder)."""
        if not self.store_text:
            return [None] * len(records)
        out: list[torch.Tensor | None] = []
        for i in range(0, len(records), TEXT_BATCH):
            chunk = [r.caption or "" for r in records[i : i + TEXT_BATCH]]
            out.extend(self._store(self.backbone.encode_prompt(chunk)).unbind(0))
        return out

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, record: ClipRecord, index: int,
               text: torch.Tensor | None = None) -> dict[str, bytes]:
        """uint8 (F, H, W, 3) frames of `record` (and its caption embedding) -> the fields of its shard sample."""
        fmt = self.settings.fmt
        if text is None and self.store_text:
            text = self.captions([record])[0]
        video = frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, F, H, W) in [-1, 1]
        pixels = video[None].to(self.device)
        devices = [] if self.device.type == "cpu" else [self.device]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(clip_seed(record, self.settings.seed))
            latents = self._store(self.backbone.encode_video(pixels)[0])
            guides, images = {}, {}
            for mode in self.guides:
                g, m = pair_from_video(video, stored_mode_indices(mode, fmt.num_frames))
                g, m = g[None].to(self.device), m[None].to(self.device)
                guides[mode] = self._store(self.backbone.condition(g, m)[0])
                image = self.backbone.encode_image(g, m)
                if image is not None:
                    images[mode] = self._store(image[0])
        meta = {"id": record.id, "index": index, "caption": record.caption or "", "scores": record.scores,
                "fps": fmt.fps or record.fps, "num_frames": fmt.num_frames, "height": fmt.height,
                "width": fmt.width, "source": record.source, "start_frame": record.start_frame,
                "end_frame": record.end_frame, "source_fps": record.fps, "latent_shape": list(latents.shape),
                "dtype": str(self.settings.dtype).removeprefix("torch."), "guides": [NO_GUIDE, *self.guides]}
        return encode_sample(latents, text, guides, images, meta)


def sample_size_estimate(unconditional: dict[str, torch.Tensor], latent_shape: Sequence[int], text: bool,
                         guides: int, dtype: torch.dtype) -> int:
    """Bytes one sample takes in a tar (tensor sizes are fixed by the model and clip size)."""
    g = unconditional[f"{GUIDE_PREFIX}{NO_GUIDE}.pth"]
    image = unconditional.get(f"{IMAGE_PREFIX}{NO_GUIDE}.pth")
    parts = [torch.zeros(latent_shape, dtype=dtype)] + [g] * guides + ([image] * guides if image is not None else [])
    if text:
        parts.append(unconditional[NULL_TEXT])
    return sum(member_size(len(tensor_bytes(p))) for p in parts) + member_size(META_ALLOWANCE)


def samples_per_shard(estimate: int, max_samples: int, max_bytes: int) -> int:
    return max(1, min(max_samples, max_bytes // max(estimate, 1)))


def shard_name(k: int) -> str:
    return f"{k:06d}"


def shard_complete(out: Path, k: int) -> bool:
    return (out / f"{shard_name(k)}.tar").is_file() and (out / f"{shard_name(k)}.json").is_file()


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, num_shards, world_size))


def write_unconditional(out: Path, parts: dict[str, torch.Tensor]) -> None:
    for name, tensor in parts.items():
        data = tensor_bytes(tensor)
        path = out / name
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)


def encode_shard(encoder: ClipEncoder, reader: SourceReader, out: Path, k: int, records: list[ClipRecord],
                 first_index: int, progress: tqdm | None = None) -> dict[str, Any]:
    """Encode shard k's clips and write `k.tar` then its index `k.json` (which marks it complete)."""
    samples, skipped = [], []
    texts = encoder.captions(records)
    for j, (record, text) in enumerate(zip(records, texts)):
        index = first_index + j
        try:
            frames = torch.from_numpy(reader.frames(record, encoder.settings.fmt))
        except ClipReadError as ex:
            log.warning("skipped clip %s: %s", record.id, ex)
            skipped.append({"id": record.id, "error": str(ex)})
        else:
            samples.append((f"{index:09d}", encoder.encode(frames, record, index, text)))
        if progress is not None:
            progress.update(1)
    size = write_tar(out / f"{shard_name(k)}.tar", samples)
    index = {"shard": f"{shard_name(k)}.tar", "samples": len(samples), "bytes": size,
             "clips": [r.id for r in records], "skipped": skipped}
    atomic_write_json(out / f"{shard_name(k)}.json", index)
    return index


def encode_shards(backbone: BackboneAdapter, records: list[ClipRecord], out: Path | str, settings: EncodeSettings,
                  rank: int = 0, world_size: int = 1, model_config: dict[str, Any] | None = None,
                  show_progress: bool = True) -> dict[str, Any]:
    """Encode this rank's incomplete shards; returns the dataset description written to dataset.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = ClipEncoder(backbone, settings)
    fmt = settings.fmt
    unconditional = encoder.unconditional()
    write_unconditional(out, unconditional)
    latent_shape = list(backbone.latent_shape(fmt.num_frames, fmt.height, fmt.width))
    estimate = sample_size_estimate(unconditional, latent_shape, encoder.store_text, len(encoder.guides),
                                    settings.dtype)
    n = samples_per_shard(estimate, settings.max_samples, settings.max_bytes)
    num_shards = -(-len(records) // n)
    mine = rank_shards(num_shards, rank, world_size)
    todo = [k for k in mine if not shard_complete(out, k)]
    log.info("%d clips -> %d shards of %d; rank %d of %d: %d shards, %d already complete", len(records), num_shards,
             n, rank, world_size, len(mine), len(mine) - len(todo))
    reader = SourceReader()
    clips = sum(len(records[k * n : (k + 1) * n]) for k in todo)
    with tqdm(total=clips, desc=f"encode rank {rank}", unit="clip", disable=not show_progress) as progress:
        for k in todo:
            encode_shard(encoder, reader, out, k, records[k * n : (k + 1) * n], k * n, progress)
    reader.close()
    image = unconditional.get(f"{IMAGE_PREFIX}{NO_GUIDE}.pth")
    info = {
        "model": model_config or {}, "clip": {"num_frames": fmt.num_frames, "height": fmt.height,
                                              "width": fmt.width, "fps": fmt.fps},
        "latent_shape": latent_shape, "text_shape": list(unconditional[NULL_TEXT].shape),
        "guide_shape": list(unconditional[f"{GUIDE_PREFIX}{NO_GUIDE}.pth"].shape),
        "image_shape": None if image is None else list(image.shape),
        "dtype": str(settings.dtype).removeprefix("torch."), "guides": [NO_GUIDE, *encoder.guides],
        "text": "stored" if encoder.store_text else "online (the model trains its text encoder)",
        "fields": [LATENTS, META, *([TEXT] if encoder.store_text else []),
                   *[f"{GUIDE_PREFIX}{m}.pth" for m in encoder.guides],
                   *([f"{IMAGE_PREFIX}{m}.pth" for m in encoder.guides] if image is not None else [])],
        "num_clips": len(records), "samples_per_shard": n, "sample_bytes_estimate": estimate,
        "num_shards": num_shards, "shards": f"{{{shard_name(0)}..{shard_name(max(num_shards - 1, 0))}}}.tar",
    }
    return write_dataset_info(out, info)


def write_dataset_info(out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """dataset.json with the totals of the shards complete now (a launch's rank 0 writes it again once every
    rank is done, so the file counts them all)."""
    info = {**info, **completed_counts(out, int(info["num_shards"]))}
    atomic_write_json(out / DATASET_INFO, info)
    return info


def completed_counts(out: Path, num_shards: int) -> dict[str, int]:
    """Totals over the shards complete so far (any rank may write dataset.json; the last one sees all)."""
    done = [json.loads((out / f"{shard_name(k)}.json").read_text()) for k in range(num_shards)
            if shard_complete(out, k)]
    return {"shards_complete": len(done), "samples": sum(d["samples"] for d in done),
            "skipped_clips": sum(len(d["skipped"]) for d in done)}

