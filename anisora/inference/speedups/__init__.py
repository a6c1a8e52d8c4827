"""Inference speed-ups, each a config field of `speedup=` that composes with the others.

    python infer.py speedup=[compile,cache]       # regional torch.compile + First-Block-Cache
    python infer.py speedup=fast                  # preset: compile + cache + fp8
    python infer.py speedup=lowvram               # group offload: the DiT streams through a small GPU

`apply_speedups` runs once after the model is loaded and before sampling. A speed-up that cannot apply
on this device or model fails with one line naming its key, or is skipped with a warning when
`speedup.best_effort` is true. Each speed-up lives in its own module here.
"""

from anisora.inference.speedups.apply import SpeedupSpec, apply_speedups, check_speedups

__all__ = ["SpeedupSpec", "apply_speedups", "check_speedups"]
