"""RL runs as pictures: held-out reward curves per round (png beside the run), and on W&B their table and
held-out sample videos of the final policy."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from anisora.io import atomic_write_bytes


def reward_curves_png(history: list[dict[str, float]], path: Path) -> Path:
    """One panel per held-out dimension: its value after each evaluated round."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k != "round"]
    rounds = [h["round"] for h in history]
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        ax.plot(rounds, [h.get(key, float("nan")) for h in history], marker="o")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("round")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def heldout_videos(method: pl.LightningModule, folder: Path, count: int = 2) -> list[tuple[Path, str]]:
    """The final policy's samples of the first `count` held-out benchmark clips, as the validation sampler makes
    them (real clip beside the sample), written as mp4 -> (path, caption)."""
    from anisora.data.synthetic import benchmark_clips
    from anisora.inference.pipeline import from_uint8_frames
    from anisora.inference.video_io import display_scale, write_mp4
    from anisora.methods.validation import validation_clips
    from anisora.tasks.infer import world_from_data

    data = dict(method.hparams.data)
    clips = benchmark_clips(world_from_data(data), int(data.get("seed", 0)), count)
    batch = {"video": torch.stack([from_uint8_frames(c.video) for c in clips]).to(method.device),
             "caption": [c.caption for c in clips], "truth": [c.truth.to_json() for c in clips]}
    frames, real, _ = validation_clips(method, batch, method.held_out_spec())
    scale = display_scale(*real.shape[2:4])
    return [(write_mp4(folder / f"heldout{i}.mp4", np.concatenate([real[i], frames[i]], 2), scale=scale),
             batch["caption"][i]) for i in range(len(frames))]


def log_rl_summary(trainer: pl.Trainer, method: pl.LightningModule, run_dir: Path) -> Path:
    """reward_curves.png always; with a W&B logger also the held-out table, the curves and sample videos."""
    from lightning.pytorch.loggers import WandbLogger

    from anisora.tracking.wandb_run import video_table

    png = reward_curves_png(method.history, run_dir / "reward_curves.png")
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers or not trainer.is_global_zero:
        return png
    import wandb

    videos = heldout_videos(method, run_dir / "samples")
    rows = [{"round": h["round"], **{k: v for k, v in h.items() if k != "round"}} for h in method.history]
    samples = [{"caption": caption, "video": str(path)} for path, caption in videos]
    for logger in loggers:
        logger.experiment.log({"heldout/rounds": wandb.Table(columns=list(rows[0]),
                                                             data=[list(r.values()) for r in rows]),
                               "heldout/reward_curves": wandb.Image(str(png)),
                               "heldout/samples": video_table(samples),
                               "heldout/videos": [wandb.Video(str(p), caption=c, format="mp4") for p, c in videos],
                               "trainer/global_step": trainer.global_step})
    return png
