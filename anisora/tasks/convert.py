"""The `anisora` console command: checkpoint conversion and step-schedule search, offline.

    anisora convert wan-original SRC DST [--dtype bf16] [--head-dim 128]
    anisora convert cogvideox-sat SRC DST [--dtype bf16] [--sample-size H W --sample-frames F]
    anisora oss-search CKPT DIR [--steps 4 8] [--clips 4]        (anisora.tasks.oss_search)

The conversion itself lives with the model families (anisora.backbones.convert). DST is written into a
temporary sibling folder and renamed into place at the end: a failed run leaves no half-written DST.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anisora.backbones.convert import DTYPES, CheckpointLayout, Conversion, first_names, layout_named, load_original
from anisora.config.errors import ConfigError
from anisora.io import atomic_write_folder


def check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise ConfigError("DST", f"{dst} is a file, not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise ConfigError("DST", f"{dst} exists and is not empty (pass --overwrite to replace it)")
    s, d = src.resolve(), dst.resolve()
    if s == d or d in s.parents:
        raise ConfigError("DST", f"{dst} holds SRC; choose another folder")


def convert_checkpoint(layout: CheckpointLayout | str, src: Path | str, dst: Path | str, *, dtype: str = "keep",
                       overwrite: bool = False, max_shard_size: str | int = "5GB", trust_pickle: bool = False,
                       progress: bool = False, log: Callable[[str], None] | None = None,
                       **options: Any) -> Conversion:
    """Convert SRC (a checkpoint in `layout`) into a diffusers folder at DST; `options` go to infer_config."""
    layout = layout_named(layout)
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dtype not in DTYPES:
        raise ConfigError("--dtype", f"must be one of {', '.join(DTYPES)}, got {dtype}")
    if not src.exists():
        raise ConfigError("SRC", f"{src} does not exist")
    check_destination(src, dst, overwrite)
    model, result = load_original(layout, src, dtype=dtype, trust_pickle=trust_pickle, progress=progress, log=log,
                                  **options)
    atomic_write_folder(dst, lambda tmp: model.save_pretrained(tmp, max_shard_size=max_shard_size), overwrite)
    if log is not None:
        written = sorted(p.name for p in dst.iterdir())
        log(f"  wrote {dst} ({first_names(written, 3)}; dtype {dtype})")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anisora", description="anisora tools (training and sampling run "
                                                                 "through train.py and infer.py)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser("convert", help="convert an original-format checkpoint to a diffusers folder",
                                  description="Convert an original-format transformer checkpoint into a folder "
                                              "that diffusers' from_pretrained loads. Offline.")
    formats = convert.add_subparsers(dest="layout", required=True, metavar="FORMAT")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("src", type=Path, metavar="SRC", help="checkpoint file or folder")
    common.add_argument("dst", type=Path, metavar="DST", help="diffusers folder to create (must be absent or empty)")
    common.add_argument("--dtype", choices=list(DTYPES), default="keep",
                        help="weight dtype in DST (modules diffusers keeps in float32 are not cast down)")
    common.add_argument("--head-dim", type=int, default=None, help="attention head width, when the default "
                                                                   "(128 for Wan, 64 for CogVideoX) is wrong")
    common.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    common.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard in DST (default 5GB)")
    common.add_argument("--trust-pickle", action="store_true",
                        help="allow .pt/.pth files that pickle objects besides tensors (runs their code)")
    formats.add_parser("wan-original", parents=[common], help="Wan2.1/2.2 transformer in Wan's layout "
                                                              "(AniSora V2/V3) -> WanTransformer3DModel")
    sat = formats.add_parser("cogvideox-sat", parents=[common], help="CogVideoX SAT checkpoint (AniSora V1) -> "
                                                                     "CogVideoXTransformer3DModel")
    sat.add_argument("--sample-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                     help="latent grid the model was trained at, when the checkpoint has no RoPE table")
    sat.add_argument("--sample-frames", type=int, default=None, help="pixel frames of that grid (4n+1)")
    oss = commands.add_parser("oss-search", help="optimal K-of-N step schedules of a flow-matching checkpoint (OSS)",
                              description="Search the K of the teacher's N Euler steps whose K-step run tracks "
                                          "its N-step trajectory (AniSora V2's OSS); writes DIR/oss_K.json for "
                                          "sampler.schedule=FILE.")
    oss.add_argument("ckpt", type=Path, metavar="CKPT", help="train.py checkpoint (the teacher)")
    oss.add_argument("out", type=Path, metavar="DIR", help="folder for the schedule files")
    oss.add_argument("--steps", type=int, nargs="+", default=[4, 8], help="student step counts (default 4 8)")
    oss.add_argument("--teacher-steps", type=int, default=None, help="N (default: the checkpoint's sampler)")
    oss.add_argument("--clips", type=int, default=4, help="benchmark clips to search on (median over them)")
    oss.add_argument("--accelerator", default="auto", help="auto, cpu, gpu or npu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `anisora`; bad input prints one `error:` line and exits with code 2."""
    args = build_parser().parse_args(argv)
    if args.command == "oss-search":
        return guarded(lambda: oss_search(args))
    return guarded(lambda: convert(args))


def oss_search(args: argparse.Namespace) -> None:
    from anisora.tasks.oss_search import search_schedules

    files = search_schedules(args.ckpt, args.steps, args.out, args.clips, args.teacher_steps,
                             accelerator=args.accelerator)
    for k, path in files.items():
        print(f"{k} steps: {path}  (sampler.schedule={path} sampler.num_steps={k} sampler.name=euler)")


def guarded(work) -> int:
    """Bad input prints one `error:` line and exits with code 2 (an OS error: code 1)."""
    try:
        work()
    except ConfigError as ex:
        print("error: " + " ".join(str(ex).split()), file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as ex:
        print("error: " + " ".join(str(ex).split()), file=sys.stderr)
        raise SystemExit(1) from None
    return 0


def convert(args: argparse.Namespace) -> None:
    options: dict[str, Any] = {"head_dim": args.head_dim}
    if args.layout == "cogvideox-sat":
        options.update(sample_size=args.sample_size, sample_frames=args.sample_frames)
    convert_checkpoint(args.layout, args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite,
                       max_shard_size=args.max_shard_size, trust_pickle=args.trust_pickle,
                       progress=sys.stderr.isatty(), log=print, **options)


if __name__ == "__main__":
    sys.exit(main())
