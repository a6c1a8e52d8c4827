"""The W&B workspace spec reads only keys the code logs; the dry run prints it; the workspace builds without network."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from anisora.tracking import dashboard
from anisora.tracking.dashboard import GROUP_BY, ROLES, SECTIONS, STEP, Panel, spec_keys

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "anisora"


def modules(folder: Path | None = None) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted((folder or PACKAGE).rglob("*.py"))}


def tuple_of_strings(node: ast.AST) -> tuple[str, ...] | None:
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return tuple(e.value for e in node.elts)
    return None


def class_tuples(folder: Path, attribute: str) -> set[str]:
    """Every string of every `attribute = ("a", "b")` class attribute under `folder` (role names, scorer dims)."""
    out: set[str] = set()
    for tree in modules(folder).values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (
                        isinstance(stmt, ast.Assign)
                        and any(getattr(t, "id", None) == attribute for t in stmt.targets)
                        and (names := tuple_of_strings(stmt.value))
                    ):
                        out |= set(names)
    return out


def logs_something(tree: ast.Module) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("log", "log_metrics")
        for n in ast.walk(tree)
    )


def logged_names() -> tuple[set[str], dict[str, set[str]]]:
    """(literal keys, template prefix -> names) the code logs. In modules that log: the first argument of a
    `.log(...)` call, and the keys of metric dicts (`{"a/b": ...}`, `{f"a/{k}": ...}`, `d["a/b"] = ...`). A template
    inside `for k in ("x", "y")` logs exactly those names; any other template's names are filled in by the test."""
    literals: set[str] = set()
    templates: dict[str, set[str]] = {}

    def add(node: ast.AST, loop_names: tuple[str, ...]) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value:
            literals.add(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            templates.setdefault(node.values[0].value, set()).update(loop_names)

    def visit(node: ast.AST, loop_names: tuple[str, ...]) -> None:
        if isinstance(node, ast.For):
            loop_names = tuple_of_strings(node.iter) or loop_names
        is_log = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "log"
        if is_log and node.args:
            add(node.args[0], loop_names)
        if isinstance(node, ast.Dict):
            for key in node.keys:
                add(key, loop_names)
        if isinstance(node, ast.DictComp):
            add(node.key, loop_names)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript):
                    add(target.slice, loop_names)
        for child in ast.iter_child_nodes(node):
            visit(child, loop_names)

    for tree in modules().values():
        if logs_something(tree):
            visit(tree, ())
    return literals, templates


def update_stats() -> set[str]:
    """The keys of the dicts RL methods pass to `log_update` (which logs each as rl/<key>)."""
    return {
        key.value
        for tree in modules(PACKAGE / "methods").values()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "log_update"
        and node.args
        and isinstance(node.args[0], ast.Dict)
        for key in node.args[0].keys
        if isinstance(key, ast.Constant)
    }


def logged_keys() -> set[str]:
    """Every key the code logs: literals, and templates filled with the names the code gives them: roles for
    `lr/` and `grad_norm/` (the telemetry callback), scorer dimensions (and the weighted `reward`) for RL rollouts
    and held-out rounds, those and the benchmark aggregates for `eval/`, the RL update statistics for `rl/`."""
    from anisora.evaluation.metrics import ClipScore, aggregate
    from anisora.rewards.weighted import REWARD

    literals, templates = logged_names()
    roles = class_tuples(PACKAGE / "methods", "role_names")
    dimensions = class_tuples(PACKAGE / "rewards", "dimensions") | {REWARD}
    clip = ClipScore("c", "left", "left", 1.0, 1.0, 0.0, 30.0, 0.9, guide_psnr={"0": 30.0})
    filled = {
        "lr/": roles,
        "grad_norm/": roles,
        "rollout/": dimensions,
        "heldout/": dimensions,
        "eval/": dimensions | set(aggregate([clip])),
        "rl/": update_stats(),
    }
    for prefix, names in filled.items():
        assert prefix in templates, f"the code no longer logs {prefix}<name>"
        templates[prefix] |= names
    return literals | {prefix + name for prefix, names in templates.items() for name in names}


def test_every_key_the_dashboard_reads_is_one_the_code_logs():
    logged = logged_keys()
    # the scan finds what each task is known to log (cf. the offline W&B runs of test_experiments.py)
    assert {
        "train/loss",
        "train/critic_loss",
        "perf/samples_per_s",
        "perf/mfu",
        "perf/peak_memory_gib",
        "val/direction_accuracy",
        "val/samples",
        "val/sample_table",
        "eval/clips",
        "eval/direction_accuracy",
        "heldout/reward",
        "heldout/rounds",
        "rollout/reward",
        "rl/round",
        "lr/student",
        STEP,
    } <= logged
    assert "eval/not_a_metric" not in logged and "lr/nobody" not in logged
    missing = sorted(spec_keys() - logged)
    assert not missing, f"dashboard keys no code logs: {missing}"
    assert set(ROLES) <= class_tuples(PACKAGE / "methods", "role_names")


def test_the_telemetry_callback_logs_the_throughput_and_per_role_keys(monkeypatch):
    """Run the callback on a fake trainer: it emits exactly the Training/Throughput keys the dashboard plots."""
    import torch

    from anisora.tracking import telemetry

    monkeypatch.setattr(telemetry, "peak_memory_gib", lambda device: 1.5)  # an accelerator's counter
    monkeypatch.setattr(telemetry, "reset_peak_memory", lambda device: None)
    weights = [torch.nn.Parameter(torch.ones(3)) for _ in ROLES]
    optimizers = [torch.optim.SGD([w], lr=0.1 * (i + 1)) for i, w in enumerate(weights)]
    for w in weights:
        w.grad = torch.full_like(w, 2.0)
    logged: dict[str, float] = {}
    trainer = SimpleNamespace(
        optimizers=optimizers,
        global_step=0,
        log_every_n_steps=1,
        world_size=1,
        is_global_zero=True,
        loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.update(m))],
    )
    module = SimpleNamespace(
        trainable_roles=lambda: list(ROLES),
        device=SimpleNamespace(type="cuda"),
        hparams={"model": {"kind": "tiny", "spatial_factor": 1}, "data": {"num_frames": 9, "height": 32, "width": 32}},
        backbone=SimpleNamespace(denoiser=torch.nn.Linear(4, 4)),
    )
    callback = telemetry.TrainingTelemetry(peak_tflops=100.0)
    callback.on_train_batch_start(trainer, module, {"video": torch.zeros(2, 1)}, 0)
    for optimizer in optimizers:
        callback.on_before_optimizer_step(trainer, module, optimizer)
    callback.on_train_batch_end(trainer, module, None, {"video": torch.zeros(2, 1)}, 0)
    panels = [p for section in ("Training", "Throughput") for p in SECTIONS[section]]
    plotted = {k for p in panels for k in p.keys if k.split("/")[0] in ("lr", "grad_norm", "perf")}
    assert plotted == set(logged), (sorted(plotted), sorted(logged))
    assert logged["lr/critic"] == pytest.approx(0.2) and logged["grad_norm/policy"] == pytest.approx(2 * 3**0.5)


def test_the_dry_run_prints_every_section_and_key_without_the_package_or_network():
    out = subprocess.run(
        [sys.executable, "-m", "anisora.tracking.dashboard", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"runs grouped by {' > '.join(GROUP_BY)}"
    assert [line[:-1] for line in lines if not line.startswith(" ") and line.endswith(":")] == list(SECTIONS)
    for panels in SECTIONS.values():
        for p in panels:
            assert any(p.title in line and all(k in line for k in p.keys) for line in lines), p
    assert "wandb_workspaces" not in out.stderr


def test_missing_entity_project_or_package_is_one_error_line(monkeypatch, capsys):
    with pytest.raises(ValueError, match="--entity: expected the W&B entity"):
        dashboard.build_workspace(None, "anisora")
    assert dashboard.main(["--entity", "team"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --project:") and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # import fails as if not installed
    assert dashboard.main(["--entity", "team", "--project", "anisora"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install wandb-workspaces" in err and "anisora[dashboards]" in err


def test_an_unknown_panel_kind_names_the_allowed_ones():
    with pytest.raises(ValueError, match="kind 'pie' is not one of line, bar"):
        dashboard.build_panel(SimpleNamespace(), Panel("x", ("train/loss",), "pie"))


def panel_keys(panel) -> tuple[str, tuple[str, ...], str | None]:
    """(kind, keys, x) of a built wandb_workspaces panel, in the spec's terms."""
    name = type(panel).__name__
    if name == "LinePlot":
        return "line", tuple(panel.y), panel.x
    if name == "BarPlot":
        return "bar", tuple(panel.metrics), None
    if name == "MediaBrowser":
        return "media", tuple(panel.media_keys), None
    if name == "WeavePanelSummaryTable":
        return "table", (panel.table_name,), None
    if name == "RunComparer":
        return "compare", (), None
    raise AssertionError(f"unexpected panel {name}")


def test_the_built_workspace_holds_the_spec_grouped_by_preset_then_task(monkeypatch):
    pytest.importorskip("wandb_workspaces", reason="the dashboards extra: pip install -e '.[dashboards]'")
    import wandb_workspaces.workspaces as ws

    saved = []
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)  # no network
    assert dashboard.main(["--entity", "team", "--project", "anisora", "--name", "recipes"]) == 0
    (workspace,) = saved
    assert (workspace.entity, workspace.project, workspace.name) == ("team", "anisora", "recipes")
    assert [s.name for s in workspace.sections] == list(SECTIONS)
    for section in workspace.sections:
        assert section.is_open
        built = [panel_keys(p) for p in section.panels]
        assert built == [(p.kind, p.keys, p.x if p.kind == "line" else None) for p in SECTIONS[section.name]]
    assert [g.name for g in workspace.runset_settings.groupby] == list(GROUP_BY)
    spec = workspace._to_model().spec.model_dump(by_alias=True, exclude_none=True)  # serialises offline
    assert spec["section"]["runSets"][0]["grouping"] == [
        {"section": "run", "name": "group"},
        {"section": "run", "name": "jobType"},
    ]
    plotted = {
        m
        for s in spec["section"]["panelBankConfig"]["sections"]
        for p in s["panels"]
        for m in p["config"].get("metrics", []) + p["config"].get("mediaKeys", [])
    }
    assert plotted <= spec_keys() and "heldout/reward" in plotted and "val/samples" in plotted
