"""Train a video diffusion model: python train.py [model=... accelerator=... key=value ...]"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from anisora.config.cli import one_line_errors
from anisora.config.store import register_configs

register_configs()


@one_line_errors("train", Path(__file__).parent / "conf")
@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from anisora.tasks import train

    return train.run(cfg)


if __name__ == "__main__":
    main()
