"""What tasks need to know of a model family before anything is built, keyed by the model config's `kind`.

Tasks ask these family-neutral functions (latent grid, folder check, guide-slot rule, weight files) and never
branch on a family name; adding a family adds one `Family` here and its module and `conf/model/` yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anisora.config.errors import ConfigError
from anisora.config.schema import CogVideoXModelConfig

ModelConfig = Mapping[str, Any]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def all_weight_files(model_cfg: ModelConfig, folder: Path) -> list[Path]:
    """Every weight file under a model folder (what loading it reads)."""
    return sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


@dataclass(frozen=True)
class Family:
    """One model family's pre-build knowledge."""

    kind: str
    #: (temporal factor, spatial factor, patch) from the config alone
    latent_grid: Callable[[ModelConfig], tuple[int, int, int]]
    #: fails in one line when a diffusers-format folder lacks a part (or the family takes no folders)
    check_folder: Callable[[ModelConfig, Path], None]
    #: each guide frame owns a latent frame (guides are encoded one at a time into their slots)
    one_guide_per_slot: bool = False
    #: the files loading `folder` reads, for the memory estimate
    weight_files: Callable[[ModelConfig, Path], list[Path]] = all_weight_files


# ---------------------------------------------------------------------- tiny


def tiny_grid(model_cfg: ModelConfig) -> tuple[int, int, int]:
    from anisora.backbones.tiny import PATCH, TEMPORAL_FACTOR, TinyBackboneSpec

    return TEMPORAL_FACTOR, int(model_cfg.get("spatial_factor", TinyBackboneSpec().spatial_factor)), PATCH[-1]


def refuse_folder(model_cfg: ModelConfig, folder: Path) -> None:
    raise ConfigError("ckpt", f"{folder} is a model folder; name its family, e.g. model=wan14b or model=wan1.3b")


# ---------------------------------------------------------------------- Wan2.1


def wan_grid(model_cfg: ModelConfig) -> tuple[int, int, int]:
    from anisora.backbones.wan_loading import PATCH, VAE_SPATIAL, VAE_TEMPORAL

    return VAE_TEMPORAL, VAE_SPATIAL, PATCH[-1]


def wan_spec(model_cfg: ModelConfig, folder: Path):
    from anisora.backbones.wan_loading import WanSpec

    defaults = WanSpec()
    return WanSpec(variant=model_cfg.get("variant", defaults.variant), ckpt=str(folder),
                   transformer=model_cfg.get("transformer"))


def check_wan(model_cfg: ModelConfig, folder: Path) -> None:
    from anisora.backbones.wan_loading import check_wan_folder

    check_wan_folder(wan_spec(model_cfg, folder))


def wan_weight_files(model_cfg: ModelConfig, folder: Path) -> list[Path]:
    """The folder's parts, with `model.transformer` (a file, shards or a folder) in place of its transformer/."""
    override = model_cfg.get("transformer")
    if not override:
        return all_weight_files(model_cfg, folder)
    dit = Path(override).expanduser()
    own = [p for p in all_weight_files(model_cfg, folder) if (folder / "transformer") not in p.parents]
    return own + ([dit] if dit.is_file() else all_weight_files(model_cfg, dit))


# ---------------------------------------------------------------------- CogVideoX


def cogvideox_grid(model_cfg: ModelConfig) -> tuple[int, int, int]:
    """VAE x4 in time and x2 per down block in space; the DiT's spatial patch."""
    from anisora.backbones.cogvideox import VAE_TEMPORAL

    defaults = CogVideoXModelConfig()
    blocks = model_cfg.get("vae_block_out_channels") or defaults.vae_block_out_channels
    return VAE_TEMPORAL, 2 ** (len(blocks) - 1), int(model_cfg.get("patch_size") or defaults.patch_size)


def check_cogvideox(model_cfg: ModelConfig, folder: Path) -> None:
    from anisora.backbones.cogvideox import CogVideoXSpec, check_cogvideox_folder

    check_cogvideox_folder(CogVideoXSpec(ckpt=str(folder)))


def tiny_cogvideox_grid(model_cfg: ModelConfig) -> tuple[int, int, int]:
    """The tiny CogVideoX: the space-to-depth codec's factors and the DiT's spatial patch."""
    from anisora.backbones.tiny_cogvideox import TEMPORAL_FACTOR, TinyCogVideoXSpec

    defaults = TinyCogVideoXSpec()
    return (TEMPORAL_FACTOR, int(model_cfg.get("spatial_factor") or defaults.spatial_factor),
            int(model_cfg.get("patch_size") or defaults.patch_size))


FAMILIES: dict[str, Family] = {f.kind: f for f in (
    Family("tiny", tiny_grid, refuse_folder),
    Family("wan", wan_grid, check_wan, weight_files=wan_weight_files),
    Family("cogvideox", cogvideox_grid, check_cogvideox, one_guide_per_slot=True),
    Family("tiny_cogvideox", tiny_cogvideox_grid, refuse_folder, one_guide_per_slot=True),
)}


def family_of(model_cfg: ModelConfig, prefix: str = "model") -> Family:
    """The family a model config names (one-line error on an unknown `kind`)."""
    kind = model_cfg.get("kind")
    if kind not in FAMILIES:
        raise ConfigError(f"{prefix}.kind", f"expected one of {', '.join(FAMILIES)}; got {kind!r}")
    return FAMILIES[kind]


def latent_grid(model_cfg: ModelConfig) -> tuple[int, int, int]:
    """(temporal factor, spatial factor, patch) of a model config, known before anything is built."""
    return family_of(model_cfg).latent_grid(model_cfg)


def check_folder(model_cfg: ModelConfig, folder: Path | str) -> None:
    """Every part the family needs is in `folder` (one-line error naming the first missing one)."""
    family_of(model_cfg).check_folder(model_cfg, Path(folder).expanduser())


def one_guide_per_slot(model_cfg: ModelConfig) -> bool:
    return family_of(model_cfg).one_guide_per_slot
