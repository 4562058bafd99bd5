"""The exception type for a bad configuration value (defined with the other job errors in ``rsvlm.errors``)."""

from __future__ import annotations

from rsvlm.errors import ConfigError

__all__ = ["ConfigError"]
