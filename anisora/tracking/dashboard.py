"""The W&B workspace of the project as code: training, throughput, samples, evaluation and RL sections over the keys
the tasks log, runs grouped by experiment preset and then by task/method (`wandb_run.run_identity`).

    python -m anisora.tracking.dashboard --entity E --project anisora [--name N]   # saves the workspace (online)
    python -m anisora.tracking.dashboard --dry-run                                 # prints the spec, no network

The spec is plain data (`SECTIONS`); only `build_workspace` needs the `wandb-workspaces` package
(`pip install 'anisora[dashboards]'`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from anisora.config.errors import ConfigError

#: x axis of step curves: Lightning's WandbLogger logs it with every row and makes it the step metric
STEP = "trainer/global_step"
#: x axis of RL curves: logged by every RL round next to its held-out scores
ROUND = "rl/round"
#: roles with an optimizer of their own: the SFT/distill student, the DMD critic, the RL policy
ROLES = ("student", "critic", "policy")
#: runset grouping: the experiment preset (a recipe's runs together), then task/method (train/sft, rl_finetune/gapo)
GROUP_BY = ("Group", "JobType")
DEFAULT_NAME = "anisora"
INSTALL_HINT = "pip install wandb-workspaces, or pip install 'anisora[dashboards]'"


class Panel(NamedTuple):
    """One panel. kind: line (curves over `x`), bar (one value per run or group), media (videos and images),
    table (a logged wandb.Table), compare (the runs' configs side by side; no keys)."""

    title: str
    keys: tuple[str, ...]
    kind: str = "line"
    x: str = STEP


KINDS = ("line", "bar", "media", "table", "compare")


def per_role(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}/{role}" for role in ROLES)


SECTIONS: dict[str, tuple[Panel, ...]] = {
    "Training": (
        Panel(
            "loss (SFT, consistency and CFG distillation, reward model; DMD student)",
            ("train/loss", "train/student_loss"),
        ),
        Panel("DMD critic loss", ("train/critic_loss",)),
        Panel("DMD gradient norm", ("train/dmd_grad",)),
        Panel("learning rate per role", per_role("lr")),
        Panel("gradient norm per role (before clipping)", per_role("grad_norm")),
    ),
    "Throughput": (
        Panel("samples / s", ("perf/samples_per_s",)),
        Panel("tokens / s", ("perf/tokens_per_s",)),
        Panel("MFU", ("perf/mfu",)),
        Panel("peak memory (GiB)", ("perf/peak_memory_gib",)),
        Panel("step time (s)", ("perf/step_s",)),
    ),
    "Samples": (
        Panel("validation videos (real | sample)", ("val/samples",), "media"),
        Panel("validation samples", ("val/sample_table",), "table"),
        Panel("direction accuracy", ("val/direction_accuracy",)),
        Panel("speed error (px / frame)", ("val/speed_error",)),
        Panel("first-frame PSNR (dB)", ("val/first_frame_psnr",)),
        Panel("temporal flickering (1 = steady)", ("val/temporal_flickering",)),
        Panel("motion: sample and teacher (distillation)", ("val/motion", "val/teacher_motion")),
        Panel("motion ratio to the teacher", ("val/motion_ratio",)),
    ),
    "Evaluation": (
        Panel(
            "motion against the ground truth",
            ("eval/direction_accuracy", "eval/speed_score", "eval/colour_consistency"),
            "bar",
        ),
        Panel("speed error (px / frame)", ("eval/speed_error",), "bar"),
        Panel("guide fidelity (dB)", ("eval/first_frame_psnr", "eval/guide_psnr_mean", "eval/guide_psnr_min"), "bar"),
        Panel(
            "temporal quality",
            ("eval/temporal_flickering", "eval/motion_smoothness_blend", "eval/dynamic_degree"),
            "bar",
        ),
        Panel("clips: video and every dimension", ("eval/clips",), "table"),
        Panel("videos and chart", ("eval/videos", "eval/chart"), "media"),
        Panel("runs compared", (), "compare"),
    ),
    "RL": (
        Panel("held-out reward per round", ("heldout/reward",), x=ROUND),
        Panel("rollout reward per round", ("rollout/reward",), x=ROUND),
        Panel("held-out direction correct", ("heldout/direction_correct",), x=ROUND),
        Panel("held-out speed score", ("heldout/speed_score",), x=ROUND),
        Panel("held-out guide PSNR (dB)", ("heldout/guide_psnr", "heldout/guide_psnr_min"), x=ROUND),
        Panel("held-out temporal flickering", ("heldout/temporal_flickering",), x=ROUND),
        Panel("policy loss", ("rl/loss",), x=ROUND),
        Panel("KL to the reference", ("rl/kl", "rl/output_kl"), x=ROUND),
        Panel("preference pairs per round", ("rl/pairs",), x=ROUND),
        Panel("held-out rounds", ("heldout/rounds",), "table"),
        Panel("final policy: held-out videos and reward curves", ("heldout/videos", "heldout/reward_curves"), "media"),
    ),
}


def spec_keys(sections: dict[str, tuple[Panel, ...]] = SECTIONS) -> set[str]:
    """Every metric key the spec reads, x axes included."""
    keys = {k for panels in sections.values() for p in panels for k in p.keys}
    return keys | {p.x for panels in sections.values() for p in panels if p.kind == "line"}


def describe(sections: dict[str, tuple[Panel, ...]] = SECTIONS) -> str:
    """The spec as text: each section, then each panel's kind, title, keys and x axis."""
    lines = [f"runs grouped by {' > '.join(GROUP_BY)}"]
    for name, panels in sections.items():
        lines.append(f"{name}:")
        for p in panels:
            axis = f"  (x: {p.x})" if p.kind == "line" else ""
            lines.append(f"  {p.kind:<7} {p.title}: {', '.join(p.keys) or '-'}{axis}")
    return "\n".join(lines)


def import_workspaces() -> tuple[Any, Any]:
    """(wandb_workspaces.workspaces, wandb_workspaces.reports.v2), or a one-line error naming the install."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise ConfigError("dashboard", f"needs the wandb-workspaces package: {INSTALL_HINT}") from None
    return ws, wr


def build_panel(wr: Any, panel: Panel) -> Any:
    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=panel.x, y=list(panel.keys))
    if panel.kind == "bar":
        return wr.BarPlot(title=panel.title, metrics=list(panel.keys), orientation="v")
    if panel.kind == "media":
        return wr.MediaBrowser(
            title=panel.title, media_keys=list(panel.keys), num_columns=2, layout=wr.Layout(w=12, h=10)
        )
    if panel.kind == "table":
        (key,) = panel.keys
        return wr.WeavePanelSummaryTable(table_name=key, layout=wr.Layout(w=24, h=12))
    if panel.kind == "compare":
        return wr.RunComparer(diff_only="split", layout=wr.Layout(w=24, h=10))
    raise ValueError(f"panel {panel.title!r}: kind {panel.kind!r} is not one of {', '.join(KINDS)}")


def build_workspace(
    entity: str | None, project: str | None, name: str = DEFAULT_NAME, sections: dict[str, tuple[Panel, ...]] = SECTIONS
) -> Any:
    """The workspace (not saved): one open section per spec section, runs grouped by preset and task/method."""
    for key, value in (("--entity", entity), ("--project", project)):
        if not value:
            raise ConfigError(
                key,
                "expected the W&B entity and project the runs log to (logger.entity, "
                "logger.project), e.g. --entity my-team --project anisora",
            )
    ws, wr = import_workspaces()
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=[
            ws.Section(name=section, panels=[build_panel(wr, p) for p in panels], is_open=True)
            for section, panels in sections.items()
        ],
        runset_settings=ws.RunsetSettings(groupby=[ws.Metric(g) for g in GROUP_BY]),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anisora.tracking.dashboard",
        description="Save the anisora W&B workspace (training, throughput, samples, "
        "evaluation, RL) to a project; needs a network and a W&B login.",
    )
    parser.add_argument("--entity", help="W&B entity (user or team) that owns the project")
    parser.add_argument("--project", help="W&B project the runs log to (logger.project, default anisora)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"workspace (view) name (default {DEFAULT_NAME})")
    parser.add_argument("--dry-run", action="store_true", help="print the sections and keys; no network")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Save the workspace (or print its spec with --dry-run); a missing entity, project or package prints one
    `error:` line and returns 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry_run:
        print(describe())
        return 0
    try:
        workspace = build_workspace(args.entity, args.project, args.name)
    except ConfigError as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2
    workspace.save()  # prints the workspace's URL
    return 0


if __name__ == "__main__":
    sys.exit(main())
