"""Step schedules: few-step grids of distilled students, their checks, schedule files, and OSS step search.

A few-step student is trained on an exact list of noise levels and must be sampled on exactly that list. The
Wan anchors give it as integer steps under a time shift ([1000, 750, 500, 250] with shift 5 -> sigmas
[1, 0.9375, 0.8333, 0.625]); `sampler.sigmas` holds the list itself and `sampler.schedule=FILE` reads one that
`anisora oss-search` wrote. OSS (AniSora V2's optimal stepsize sampling) picks the K of a teacher's N Euler steps
whose K-step run lands closest to the N-step trajectory, by dynamic programming over the teacher's grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from anisora.config.errors import ConfigError
from anisora.diffusion.flow_matching import NUM_TRAIN_TIMESTEPS, shift_sigmas
from anisora.io import atomic_write_json

SCHEDULE_FORMAT = "anisora.schedule/1"


def few_step_sigmas(timesteps: Sequence[float], shift: float) -> list[float]:
    """Integer steps in (0, 1000] under a time shift -> noise levels (LightX2V's and FastVideo's warping)."""
    u = torch.tensor([float(t) / NUM_TRAIN_TIMESTEPS for t in timesteps], dtype=torch.float64)
    return [round(float(s), 6) for s in shift_sigmas(u, shift)]


def check_sigmas(sigmas: Sequence[float], num_steps: int, key: str = "sampler.sigmas") -> list[float]:
    """A student grid must decrease strictly inside (0, 1] and have one level per sampling step."""
    values = [float(s) for s in sigmas]
    if not values:
        raise ConfigError(key, "expected a non-empty list of noise levels in (0, 1]")
    if any(not 0.0 < s <= 1.0 for s in values):
        raise ConfigError(key, f"expected every level in (0, 1], got {values}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ConfigError(key, f"expected strictly decreasing levels, got {values}")
    if len(values) != int(num_steps):
        raise ConfigError("sampler.num_steps", f"the step list has {len(values)} levels but sampler.num_steps is "
                          f"{num_steps}: set sampler.num_steps={len(values)}")
    return values


def read_schedule(path: Path | str) -> list[float]:
    """The sigma list of a schedule file written by `write_schedule` (`sampler.schedule=FILE`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        sigmas = [float(s) for s in data["sigmas"]]
    except FileNotFoundError:
        raise ConfigError("sampler.schedule", f"{path} does not exist") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError("sampler.schedule", f"{path} is not a schedule file (expected JSON with 'sigmas')") from None
    return sigmas


def write_schedule(path: Path | str, sigmas: Sequence[float], **record: Any) -> Path:
    """A schedule file: the sigma list and how it was found (teacher grid, indices, costs)."""
    return atomic_write_json(Path(path), {"format": SCHEDULE_FORMAT, "sigmas": [float(s) for s in sigmas], **record})


def resolved_sigmas(spec) -> list[float] | None:
    """The exact levels a sampler spec asks for: `sigmas`, else its schedule file, else None (a uniform grid)."""
    if spec.sigmas:
        return [float(s) for s in spec.sigmas]
    if getattr(spec, "schedule", None):
        return read_schedule(spec.schedule)
    return None


def check_sampler(spec) -> None:
    """Every sampler check that needs no model (train.py and infer.py call it before building anything)."""
    sigmas = resolved_sigmas(spec)
    if sigmas is not None:
        check_sigmas(sigmas, spec.num_steps, "sampler.schedule" if not spec.sigmas else "sampler.sigmas")
        if spec.name not in ("euler", "euler_renoise", "flow_sde"):
            raise ConfigError("sampler.name", f"an exact step list samples with euler, euler_renoise or flow_sde, "
                              f"got {spec.name!r}")


def stock_scheduler_config(spec) -> dict[str, Any]:
    """Settings of diffusers' `UniPCMultistepScheduler` that make a stock pipeline sample a few-step student as
    deterministic Euler on its grid: first order with the corrector off is exactly the flow Euler step, and its
    flow-sigma grid with `flow_shift` reproduces a shifted uniform list (1, 0.9375, 0.8333, 0.625 -> 1.0,
    0.9376, 0.8336, 0.6259 in diffusers 0.42). Refuses a list that no shift reproduces (OSS schedules): sample
    those with infer.py."""
    sigmas = resolved_sigmas(spec)
    steps = int(spec.num_steps)
    config = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": float(spec.shift),
              "solver_order": 1, "disable_corrector": list(range(steps)), "num_train_timesteps": NUM_TRAIN_TIMESTEPS}
    if sigmas is not None:
        uniform = [1 - i / steps for i in range(steps)]
        grid = few_step_sigmas([u * NUM_TRAIN_TIMESTEPS for u in uniform], spec.shift)
        if max(abs(a - b) for a, b in zip(grid, sigmas)) > 2e-3:
            raise ConfigError("sampler.sigmas", f"{sigmas} is not a uniform grid under shift {spec.shift}: stock "
                              "diffusers schedulers cannot reproduce it (sample with infer.py)")
    return config


# ------------------------------------------------------------------------------------------------------ OSS
def oss_search(velocity: Callable[[torch.Tensor, float], torch.Tensor], start: torch.Tensor,
               teacher: Sequence[torch.Tensor], grid: Sequence[float], num_steps: int) -> tuple[list[int], list[float]]:
    """The `num_steps` of the teacher's Euler grid whose Euler run tracks the teacher's trajectory best.

    `grid` holds the teacher's N+1 levels from 1 down to 0 and `teacher` its N+1 states (teacher[0] = `start`,
    teacher[N] = the clean result). Stage k keeps, for every grid index j, the lowest-cost k-jump state landing
    on j (cost: mean |state - teacher[j]|, as AniSora's search_OSS: the distance where each jump lands) and its
    predecessor; each stage evaluates `velocity` once per reachable state. Returns the chosen start indices of the
    K jumps (ascending, the first 0) and their levels."""
    n = len(grid) - 1
    if not 1 <= num_steps <= n:
        raise ConfigError("oss.num_steps", f"expected 1..{n} (the teacher's steps), got {num_steps}")
    states: dict[int, torch.Tensor] = {0: start}
    parents: list[dict[int, int]] = []
    for k in range(num_steps):
        best: dict[int, tuple[float, int, torch.Tensor]] = {}
        last = k == num_steps - 1
        for i, state in states.items():
            v = velocity(state, grid[i])
            targets = [n] if last else range(i + 1, n - (num_steps - k - 1) + 1)
            for j in targets:
                landed = state + (grid[j] - grid[i]) * v
                cost = float((landed - teacher[j]).abs().mean())
                if j not in best or cost < best[j][0]:
                    best[j] = (cost, i, landed)
        parents.append({j: b[1] for j, b in best.items()})
        states = {j: b[2] for j, b in best.items()}
    chain, j = [], n
    for stage in reversed(parents):
        j = stage[j]
        chain.append(j)
    chain.reverse()
    return chain, [float(grid[i]) for i in chain]


def median_schedule(chains: Sequence[Sequence[int]]) -> list[int]:
    """Element-wise upper median of several searches' index lists (AniSora's get-med), kept strictly increasing."""
    columns = list(zip(*chains))
    out: list[int] = []
    for col in columns:
        ordered = sorted(col)
        value = ordered[len(ordered) // 2]
        out.append(max(value, out[-1] + 1) if out else value)
    return out
