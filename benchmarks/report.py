"""What the benchmark scripts print: one `key  value` line per field (floats to three places) for a single-row
script, and the one-line error a failed row records."""

from __future__ import annotations

from typing import Any


def print_key_values(row: dict[str, Any]) -> None:
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


def error_line(ex: BaseException) -> str:
    """A failed row's error: the exception's type and first line, at most 300 characters (a table cell)."""
    return f"{type(ex).__name__}: {ex}".splitlines()[0][:300]
