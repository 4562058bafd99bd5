"""The check every config dataclass runs in ``__post_init__``: raise a :class:`ConfigError` naming the key."""

from __future__ import annotations

from typing import Any

from rsvlm.config.errors import ConfigError


def require(condition: bool, key: str, problem: str, choices: Any = None) -> None:
    if not condition:
        raise ConfigError(key, problem, choices)
