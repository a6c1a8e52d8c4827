"""VBench's Quality and Total scores from dimension means: each dimension normalised to (s - Min) / (Max - Min)
with VBench's NORMALIZE_DIC, then a weighted mean with DIM_WEIGHT (dynamic degree 0.5, the others 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping

#: VBench's (Min, Max) of each quality dimension (scripts/constant.py NORMALIZE_DIC)
NORMALIZE: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
}
QUALITY_DIMENSIONS = tuple(NORMALIZE)
DIM_WEIGHT: dict[str, float] = {"dynamic_degree": 0.5}  # every other dimension weighs 1
#: where our proxy stands in for a VBench dimension (named as such in the report)
PROXIES: dict[str, str] = {"motion_smoothness": "motion_smoothness_blend", "imaging_quality": "imaging_quality_clipiqa"}


def normalised(name: str, value: float) -> float:
    lo, hi = NORMALIZE[name]
    return (value - lo) / (hi - lo)


def quality(means: Mapping[str, float]) -> dict[str, float]:
    """vbench_quality: DIM_WEIGHT-weighted mean of the normalised quality dimensions present in `means` (a proxy
    stands in where the real one is absent); vbench_quality_dims: how many of VBench's 7 it covers (a Quality over
    fewer than 7 is not VBench's number). Nothing when no quality dimension is present."""
    terms = []
    for name in QUALITY_DIMENSIONS:
        value = means.get(name, means.get(PROXIES.get(name, ""), math.nan))
        if value is not None and not math.isnan(value):
            terms.append((DIM_WEIGHT.get(name, 1.0), normalised(name, value)))
    if not terms:
        return {}
    weight = sum(w for w, _ in terms)
    return {"vbench_quality": sum(w * v for w, v in terms) / weight, "vbench_quality_dims": float(len(terms))}


def total(quality_score: float, semantic_score: float) -> float:
    """VBench's Total = (4 Quality + 1 Semantic) / 5."""
    return (4.0 * quality_score + semantic_score) / 5.0
