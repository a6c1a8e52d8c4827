"""What the single-row benchmark scripts print: one `key  value` line per field, floats to three places."""

from __future__ import annotations

from typing import Any


def print_key_values(row: dict[str, Any]) -> None:
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
