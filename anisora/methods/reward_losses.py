"""Losses and held-out metrics of a learned reward model, as plain functions (next-batch.md section 3.1).

- Bradley-Terry: -log sigmoid(delta), delta = r_winner - r_loser.
- Bradley-Terry with ties (VideoReward's `btt`, k = 5): a preference -log sigmoid(delta - ln k); a tie
  -log sigmoid(delta - ln k) - log sigmoid(-delta - ln k) - ln(k^2 - 1), lowest at delta = 0 (ln((k+1)/(k-1))).
- Regression: mean squared error on the labelled entries of standardised scores.
- Metrics: Spearman's rank correlation (average ranks for ties) and the accuracy on non-tied pairs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def bradley_terry_loss(delta: torch.Tensor) -> torch.Tensor:
    """Per pair -log P(winner beats loser) = -log sigmoid(delta)."""
    return -F.logsigmoid(delta)


def bradley_terry_ties_loss(delta: torch.Tensor, tie: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """Per pair -log P under Rao-Kupper ties with threshold ln k; `tie` (bool) marks tied pairs (delta's order
    does not matter for them)."""
    if k <= 1.0:
        raise ValueError(f"tie k must exceed 1, got {k}")
    threshold = math.log(k)
    win = -F.logsigmoid(delta - threshold)
    tied = win - F.logsigmoid(-delta - threshold) - math.log(k * k - 1.0)
    return torch.where(tie, tied, win)


def pair_loss(delta: torch.Tensor, tie: torch.Tensor, kind: str, k: float = 5.0) -> torch.Tensor:
    """Mean pairwise loss: `bt` skips tied pairs, `btt` models them."""
    if kind == "bt":
        keep = ~tie
        return bradley_terry_loss(delta[keep]).mean() if keep.any() else delta.sum() * 0.0
    if kind == "btt":
        return bradley_terry_ties_loss(delta, tie, k).mean() if len(delta) else delta.sum() * 0.0
    raise ValueError(f"pair loss: expected bt or btt, got {kind!r}")


def regression_loss(pred: torch.Tensor, target: torch.Tensor, low: torch.Tensor | None = None,
                    high: torch.Tensor | None = None) -> torch.Tensor:
    """MSE over the finite entries of `target` (NaN = unlabelled). With the score range's ends `low` and `high`
    (per dimension, in the target's units), censored at them: where the target sits at an end, a prediction past
    that end costs nothing (a clip cannot be more than fully colour-consistent), as the clamped output reports it."""
    if high is not None:
        pred = torch.where(target >= high - 1e-5, torch.minimum(pred, high), pred)
    if low is not None:
        pred = torch.where(target <= low + 1e-5, torch.maximum(pred, low), pred)
    keep = torch.isfinite(target)
    return F.mse_loss(pred[keep], target[keep]) if keep.any() else pred.sum() * 0.0


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    out = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        out[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho over the entries where both are finite; NaN when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return math.nan
    ra, rb = ranks(a[keep]), ranks(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def pair_accuracy(delta: np.ndarray, tie: np.ndarray) -> float:
    """Share of non-tied pairs whose winner gets the higher reward (delta > 0), a predicted tie (delta == 0, two
    clips both at the end of a score's range) counting half, as a coin toss between them would; NaN without such
    pairs."""
    delta, tie = np.asarray(delta, dtype=np.float64), np.asarray(tie, dtype=bool)
    keep = ~tie
    return float(((delta[keep] > 0) + 0.5 * (delta[keep] == 0)).mean()) if keep.any() else math.nan
