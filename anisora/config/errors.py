"""One error type for bad input, so entry points can print it as one line and exit non-zero."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad configuration or input: the message names the key or path and what is expected."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")
