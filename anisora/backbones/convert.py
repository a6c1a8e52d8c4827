"""Original-format transformer checkpoints -> diffusers models, in memory (the `anisora convert` CLI in
anisora.tasks.convert writes them out as folders; Wan loading runs AniSora's original-layout DiT through here).

The architecture is inferred from the checkpoint, the model is built on the meta device, and every key
is checked (names and shapes) before any weight is read. Then each source file is read once and its
tensors are renamed and moved into the model, so a 14B conversion holds one copy of the weights.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open

from anisora.backbones import cogvideox_sat, wan_original
from anisora.config.errors import ConfigError

Target = tuple[str, Callable[[torch.Tensor], torch.Tensor]]
DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointLayout(Protocol):
    """A model family's original layout: where its files are, what architecture they hold, what each
    tensor becomes in diffusers (None: unknown tensor; []: known and not kept)."""

    name: str
    model_class: type

    def find_files(self, src: Path) -> list[Path]: ...

    def infer_config(self, shapes: Mapping[str, Sequence[int]], read: Callable[[str], torch.Tensor],
                     **options: Any) -> dict[str, Any]: ...

    def plan(self, name: str, config: Mapping[str, Any]) -> list[Target] | None: ...

    def original_key(self, target: str) -> str: ...


LAYOUTS: dict[str, CheckpointLayout] = {layout.name: layout for layout in (wan_original.LAYOUT, cogvideox_sat.LAYOUT)}


def layout_named(layout: CheckpointLayout | str) -> CheckpointLayout:
    """A layout object, or the one registered under that name (one-line error otherwise)."""
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise ConfigError("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout}")
        return LAYOUTS[layout]
    return layout


def find_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The tensor dict inside a pickled checkpoint: itself, or under module (SAT/DeepSpeed), state_dict or model."""
    for key in (None, "module", "state_dict", "model"):
        found = obj if key is None else obj.get(key) if isinstance(obj, Mapping) else None
        if isinstance(found, Mapping) and found and all(isinstance(v, torch.Tensor) for v in found.values()):
            return found
    keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, Mapping) else type(obj).__name__
    raise ConfigError(str(path), f"holds no dict of tensors at the top or under module/state_dict/model ({keys})")


def load_pickled(path: Path, trust_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    """A .pt/.pth state dict, memory-mapped so that only the tensors read are paged in."""
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": not trust_pickle}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # SAT stores its run arguments
            try:
                obj = torch.load(path, mmap=True, **kwargs)
            except RuntimeError as ex:
                if "mmap" not in str(ex):
                    raise
                obj = torch.load(path, **kwargs)  # the pre-zip format cannot be memory-mapped
    except pickle.UnpicklingError as ex:
        reason = str(ex).strip().splitlines()[0][:120]
        raise ConfigError(str(path), f"holds pickled objects besides tensors ({reason}); pass --trust-pickle "
                                     "only if you trust this file") from None
    except (RuntimeError, EOFError, ValueError) as ex:
        raise ConfigError(str(path), f"cannot be read as a PyTorch checkpoint ({str(ex).splitlines()[0]})") from None
    return find_state_dict(obj, path)


class CheckpointReader:
    """Names and shapes of the tensors in some weight files without reading their data; tensors on demand."""

    def __init__(self, files: Sequence[Path], trust_pickle: bool = False) -> None:
        self.files = list(files)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._file_of: dict[str, int] = {}
        self._pickled: dict[int, Mapping[str, torch.Tensor]] = {}
        for index, path in enumerate(self.files):
            for name, shape in self._index(index, path, trust_pickle):
                if name in self._file_of:
                    other = self.files[self._file_of[name]].name
                    raise ConfigError(str(path), f"{name} is also in {other}")
                self.shapes[name] = shape
                self._file_of[name] = index

    def _index(self, index: int, path: Path, trust_pickle: bool) -> list[tuple[str, tuple[int, ...]]]:
        if path.suffix in PICKLE_SUFFIXES:
            state = load_pickled(path, trust_pickle)
            self._pickled[index] = state
            return [(k, tuple(v.shape)) for k, v in state.items()]
        if path.suffix != ".safetensors":
            expected = "/".join((".safetensors", *PICKLE_SUFFIXES))
            raise ConfigError(str(path), f"unknown weights file type (expected {expected})")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return [(k, tuple(f.get_slice(k).get_shape())) for k in f.keys()]
        except (SafetensorError, OSError) as ex:
            raise ConfigError(str(path), f"cannot be read as safetensors ({ex})") from None

    def get(self, name: str) -> torch.Tensor:
        index = self._file_of[name]
        if index in self._pickled:
            return self._pickled[index][name]
        with safe_open(self.files[index], framework="pt", device="cpu") as f:
            return f.get_tensor(name)

    def tensors(self, wanted: Container[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors (all, or those `wanted`), file by file, each file opened once."""
        for index, path in enumerate(self.files):
            names = [n for n, i in self._file_of.items() if i == index and (wanted is None or n in wanted)]
            if index in self._pickled:
                yield from ((n, self._pickled[index][n]) for n in names)
                continue
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in names:
                    yield name, f.get_tensor(name)


def first_names(names: Sequence[str], count: int = 4) -> str:
    more = f", ... (+{len(names) - count})" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def plan_conversion(layout: CheckpointLayout, shapes: Mapping[str, Sequence[int]], config: Mapping[str, Any],
                    expected: Mapping[str, Sequence[int]]) -> tuple[dict[str, list[Target]], list[str]]:
    """Each source tensor's targets, and the names dropped; fails on unknown, missing or misshapen keys."""
    plans: dict[str, list[Target]] = {}
    dropped, unknown = [], []
    source_of: dict[str, str] = {}
    for name in sorted(shapes):
        plan = layout.plan(name, config)
        if plan is None:
            unknown.append(name)
        elif not plan:
            dropped.append(name)
        else:
            for target, _ in plan:
                if target in source_of:
                    raise ConfigError("checkpoint", f"{source_of[target]} and {name} both map to {target}")
                source_of[target] = name
            plans[name] = plan
    unexpected = unknown + sorted({source_of[t] for t in source_of if t not in expected})
    missing = list(dict.fromkeys(layout.original_key(t) for t in expected if t not in source_of))
    problems = [f"{len(unexpected)} unexpected keys: {first_names(unexpected)}"] if unexpected else []
    problems += [f"{len(missing)} missing keys: {first_names(missing)}"] if missing else []
    if problems:
        raise ConfigError("checkpoint", f"does not match the inferred {layout.model_class.__name__}; "
                                        + "; ".join(problems))
    for name, plan in plans.items():
        meta = torch.empty(tuple(shapes[name]), device="meta")
        for target, fn in plan:
            got = tuple(fn(meta).shape)
            if got != tuple(expected[target]):
                raise ConfigError(name, f"shape {list(shapes[name])} gives {target} {list(got)}, the inferred "
                                        f"model expects {list(expected[target])}")
    return plans, dropped


def _cast(tensor: torch.Tensor, target: str, dtype: torch.dtype | None, keep_fp32: Sequence[str]) -> torch.Tensor:
    """To `dtype`, except that modules diffusers keeps in float32 are never cast down."""
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    if dtype != torch.float32 and any(part in keep_fp32 for part in target.split(".")):
        return tensor
    return tensor.to(dtype)


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor with a storage of its own: safetensors refuses tensors that share memory (the
    q/k/v thirds of one fused projection, or DeepSpeed's flat buffers)."""
    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    if tensor.is_contiguous() and tensor.storage_offset() == 0 and whole:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def load_into(model: torch.nn.Module, reader: CheckpointReader, plans: Mapping[str, list[Target]],
              dtype: torch.dtype | None = None, progress: bool = False) -> None:
    """Move every planned tensor into a meta-device model (assigned, not copied, where no cast or split needs a
    copy). Sources stay memory-mapped, so process memory holds one copy of the converted weights."""
    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    items: Iterator[tuple[str, torch.Tensor]] = reader.tensors(plans)
    if progress:
        from rich.progress import track

        items = track(items, total=len(plans), description="converting", transient=True)
    chunk: dict[str, torch.Tensor] = {}
    for name, tensor in items:
        for target, fn in plans[name]:
            chunk[target] = _owned(_cast(fn(tensor), target, dtype, keep_fp32))
        if len(chunk) >= 256:
            model.load_state_dict(chunk, strict=False, assign=True)
            chunk = {}
    model.load_state_dict(chunk, strict=False, assign=True)
    left = [k for k, v in model.state_dict().items() if v.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device after loading: {first_names(left)}")


@dataclass
class Conversion:
    """What a conversion did: the inferred architecture, its size, and the source tensors it left out."""

    layout: str
    model_class: str
    config: dict[str, Any]
    num_parameters: int
    num_tensors: int
    source_files: list[Path]
    dropped: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        n = self.num_parameters
        size = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"
        lines = [f"{self.layout}: {len(self.source_files)} file(s), {self.num_tensors} tensors -> {self.model_class}",
                 "  " + " ".join(f"{k}={v}" for k, v in self.config.items()),
                 f"  parameters: {n:,} ({size})"]
        if self.dropped:
            lines.append(f"  not kept: {len(self.dropped)} tensors ({first_names(self.dropped, 3)})")
        return lines


def load_original(layout: CheckpointLayout | str, src: Path | str, *, dtype: str = "keep", trust_pickle: bool = False,
                  progress: bool = False, log: Callable[[str], None] | None = None,
                  **options: Any) -> tuple[torch.nn.Module, Conversion]:
    """The diffusers model of a checkpoint in `layout`, in memory (no folder written): what infer.py uses to
    run AniSora's original-format DiT weights directly."""
    layout = layout_named(layout)
    src = Path(src).expanduser()
    if not src.exists():
        raise ConfigError("SRC", f"{src} does not exist")
    files = layout.find_files(src)
    reader = CheckpointReader(files, trust_pickle)
    config = layout.infer_config(reader.shapes, reader.get, **options)
    with torch.device("meta"):
        model = layout.model_class(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    plans, dropped = plan_conversion(layout, reader.shapes, config, expected)
    result = Conversion(layout.name, type(model).__name__, config, sum(p.numel() for p in model.parameters()),
                        len(reader.shapes), files, dropped)
    if log is not None:
        for line in result.describe():
            log(line)
    load_into(model, reader, plans, DTYPES[dtype], progress)
    return model, result
