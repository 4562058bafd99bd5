"""The object categories every part of the generator shares, and how many of each a scene may hold."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

CATEGORIES: tuple[str, ...] = ("storage tank", "ship", "airplane", "vehicle", "tennis court")
PLURALS: Mapping[str, str] = MappingProxyType({c: c + "s" for c in CATEGORIES})
MAX_COUNT = 4
