"""Sample videos from a checkpoint: python infer.py [ckpt=... prompt=... guide=...]"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from anisora.config.cli import one_line_errors
from anisora.config.store import register_configs

register_configs()


@one_line_errors("infer", Path(__file__).parent / "conf")
@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    from anisora.tasks import infer

    return infer.run(cfg)


if __name__ == "__main__":
    main()
