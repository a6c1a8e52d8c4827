"""`anisora-data`: the data commands, each configured through Hydra like the root entry points.

    anisora-data curate input=/anime/episodes out=/data/curated [key=value ...]   # conf/curate.yaml
    anisora-data encode manifest=/data/curated/manifest.jsonl model=wan1.3b out=/data/shards   # conf/encode.yaml

Each subcommand is `anisora.tasks.<name>.run(cfg)` behind `@hydra.main`, with the same one-line errors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
COMMANDS = {"curate": "curate raw videos into scored clips: manifest.jsonl, report.md, histograms",
            "encode": "encode kept clips with a backbone's encoders into webdataset shards"}


def usage() -> str:
    lines = ["usage: anisora-data COMMAND [key=value ...]", "commands:"]
    lines += [f"  {name:8s} {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def hydra_command(name: str):
    """`run(cfg)` of anisora.tasks.<name> wrapped as a Hydra main over conf/<name>.yaml."""
    import importlib

    import hydra
    from omegaconf import DictConfig

    from anisora.config.cli import one_line_errors
    from anisora.config.store import register_configs

    register_configs()

    @one_line_errors(name, CONFIG_DIR)
    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=name)
    def main(cfg: DictConfig):
        return importlib.import_module(f"anisora.tasks.{name}").run(cfg)

    return main


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: anisora-data {command}: no such command; available: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"anisora-data {command}", *rest]  # Hydra reads its overrides from sys.argv
    hydra_command(command)()


if __name__ == "__main__":
    main()
