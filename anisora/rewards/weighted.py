"""A weighted sum of any scorers' dimensions: the one number RL maximises, next to every dimension it is made of."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from anisora.config.errors import ConfigError
from anisora.rewards.base import Clip, Scorer

REWARD = "reward"


class WeightedScorer(Scorer):
    """reward = sum of weight * score over the weighted dimensions that apply to a clip (NaN terms are skipped, so
    a clip without ground truth is rewarded on what it has). Every part's own dimensions are reported too; where
    two parts name the same dimension, the first part's value is kept.

    A dimension where lower is better (an error) must carry a negative weight: a positive one would reward it.
    """

    def __init__(self, parts: Sequence[Scorer], weights: Mapping[str, float], key: str = "reward.weights") -> None:
        if not parts:
            raise ConfigError("reward.scorers", "expected at least one scorer to weight")
        self.parts = list(parts)
        names = list(dict.fromkeys(d for p in self.parts for d in p.dimensions))
        higher = {d for p in self.parts for d in p.higher_is_better}
        if not weights:
            raise ConfigError(key, f"expected {{dimension: weight}} over {', '.join(names)}")
        for name, weight in weights.items():
            if name not in names:
                raise ConfigError(f"{key}.{name}", f"not a dimension of the scorers; expected one of "
                                                   f"{', '.join(names)}")
            if weight > 0 and name not in higher:
                raise ConfigError(f"{key}.{name}", f"lower is better for this dimension: expected a negative weight, "
                                                   f"got {weight}")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.dimensions = (REWARD, *names)
        self.higher_is_better = (REWARD, *[d for d in names if d in higher])

    def score(self, clips: Sequence[Clip]) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = [{} for _ in clips]
        for part in self.parts:
            for row, scores in zip(rows, part.score(clips), strict=True):
                for k, v in scores.items():
                    row.setdefault(k, v)
        out = []
        for row in rows:
            terms = [w * row[k] for k, w in self.weights.items() if not math.isnan(row[k])]
            out.append({REWARD: float(sum(terms)) if terms else math.nan, **row})
        return out
