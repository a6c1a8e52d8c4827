"""Atomic file and folder writes: the one implementation every writer in anisora uses.

A file or folder is filled under a hidden temporary sibling (same folder, so the final rename never
crosses filesystems), flushed to disk, then renamed into place. A crash, a kill or a reader polling
the output folder (W&B, a training callback, `ckpt_path=last`, a user) never sees half of it, and the
temporary never outlives a failure. Hidden names start with `.<name>.tmp-` (files) or
`.<name>.partial-` (folders), so a later run can recognise and clear stale ones.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anisora.config.errors import ConfigError


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name next to `path`, ending in the tag rather than the suffix, so a reader globbing
    `*.mp4` or `*.json` never picks up a file still being written (writers name their format explicitly)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_path(path: Path) -> None:
    """Flush a written file to disk, whoever wrote it (a file handle, PyAV, torch.save by name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Run `write(tmp)` on a temporary sibling, fsync it, then replace `path` with it; creates the parent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, value: Any) -> Path:
    """`value` as indented, key-sorted JSON (stable bytes for the same value), written atomically."""
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fsync_path(path)


def _clear_for(dst: Path, overwrite: bool, key: str) -> Path | None:
    """Make room for the new folder at `dst`: the old one moved aside (returned) or an empty one removed."""
    if not dst.is_dir():
        return None
    if not any(dst.iterdir()):
        dst.rmdir()
        return None
    if not overwrite:
        raise ConfigError(key, f"{dst} was filled by someone else while it was being written")
    old = temporary_sibling(dst, "replaced")
    dst.rename(old)
    return old


def remove_folder(path: Path) -> None:
    """Delete a folder so that no reader ever sees it half-deleted: renamed to a hidden sibling first (one atomic
    step), then removed; a process killed in between leaves only the hidden name."""
    doomed = temporary_sibling(path, "removed")
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def atomic_write_folder(dst: str | Path, write: Callable[[Path], Any], overwrite: bool = False,
                        key: str = "DST") -> Path:
    """`write(tmp)` fills a temporary sibling folder, which then replaces `dst`.

    A non-empty `dst` is replaced only with `overwrite` (else ConfigError naming `key`); on any failure
    `dst` is left as it was and the temporary folder is removed.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dst, "partial")
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_folder(tmp, dst, overwrite, key)


def replace_folder(tmp: Path, dst: Path, overwrite: bool = True, key: str = "DST") -> Path:
    """A filled folder `tmp` (a sibling of `dst`) flushed to disk and renamed to `dst`, the old `dst` moved aside
    first and removed last; for writers that fill the folder themselves (every rank of a sharded checkpoint).
    On any failure `dst` is left as it was and `tmp` is removed."""
    old: Path | None = None
    try:
        _fsync_tree(tmp)
        old = _clear_for(dst, overwrite, key)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dst.exists():
            old.rename(dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst
