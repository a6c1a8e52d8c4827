"""Score a checkpoint on the held-out benchmark, or a folder of mp4s: python evaluate.py [videos=DIR]"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from anisora.config.cli import one_line_errors
from anisora.config.store import register_configs

register_configs()


@one_line_errors("evaluate", Path(__file__).parent / "conf")
@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    from anisora.tasks import evaluate

    return evaluate.run(cfg)


if __name__ == "__main__":
    main()
