"""Preference and reward fine-tuning: python rl_finetune.py [rl=gapo|dpo|rwr|grpo] [ckpt=PATH] [key=value ...]"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from anisora.config.cli import one_line_errors
from anisora.config.store import register_configs

register_configs()


@one_line_errors("rl_finetune", Path(__file__).parent / "conf")
@hydra.main(version_base="1.3", config_path="conf", config_name="rl_finetune")
def main(cfg: DictConfig) -> dict[str, float]:
    from anisora.tasks import rl_finetune

    return rl_finetune.run(cfg)


if __name__ == "__main__":
    main()
