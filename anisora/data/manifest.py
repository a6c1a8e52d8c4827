"""One line of `manifest.jsonl`: a clip cut from a source video, its scores and the curation verdict.

`anisora-data curate` writes these lines; `anisora-data encode` reads the kept ones. Frame numbers
are in the source's own frame indexing: the clip is frames [start_frame, end_frame).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anisora.config.errors import ConfigError


def clip_id(source: str, start_frame: int, end_frame: int) -> str:
    """A stable id from where the clip comes from (the same clip gets the same id in every run)."""
    digest = hashlib.sha1(f"{source}\0{start_frame}\0{end_frame}".encode()).hexdigest()[:16]
    return f"{Path(source).stem[:40]}-{start_frame:07d}-{digest}"


@dataclass
class ClipRecord:
    source: str  # path of the source video as given (absolute after curation)
    start_frame: int = 0
    end_frame: int = 0  # exclusive
    fps: float = 0.0
    width: int = 0
    height: int = 0
    scores: dict[str, float] = field(default_factory=dict)  # every measured score, by name
    keep: bool = False
    reasons: list[str] = field(default_factory=list)  # why it was rejected ("motion<0.5", "duplicate_of:ID", ...)
    caption: str | None = None  # with AniSora's score suffix when captions are on
    error: str | None = None  # one line when the source could not be read; then the clip fields are empty
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = clip_id(self.source, self.start_frame, self.end_frame)

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def to_json(self) -> str:
        out: dict[str, Any] = asdict(self)
        out["num_frames"], out["duration_s"] = self.num_frames, round(self.duration_s, 4)
        return json.dumps(out, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> ClipRecord:
        data = json.loads(line)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def read_manifest(path: Path | str, kept_only: bool = False) -> Iterator[ClipRecord]:
    """Records of a manifest file, in file order; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("manifest", f"{path} does not exist (expected a manifest.jsonl from anisora-data curate)")
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = ClipRecord.from_json(line)
            except (ValueError, TypeError) as ex:
                raise ConfigError("manifest", f"{path}:{number}: not a clip record ({ex})") from ex
            if record.keep or not kept_only:
                yield record
