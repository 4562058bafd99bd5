"""The one exception type for a bad configuration value."""

from __future__ import annotations

from typing import Any, Iterable, Optional


class ConfigError(ValueError):
    """A configuration value is invalid. ``str()`` is one line naming the key, the problem and the choices."""

    def __init__(self, key: str, problem: str, choices: Optional[Iterable[Any]] = None):
        self.key = key
        self.problem = problem
        self.choices = [str(c) for c in choices] if choices is not None else None
        line = f"config error: {key}: {problem}"
        if self.choices:
            line += f" (choices: {', '.join(self.choices)})"
        super().__init__(line)
