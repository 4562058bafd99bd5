"""Fine-tuning strategies behind one small protocol, and the registry that builds them from config."""

from rsvlm.strategies.base import Strategy, apply_trainability
from rsvlm.strategies.registry import build_strategy

__all__ = ["Strategy", "apply_trainability", "build_strategy"]
