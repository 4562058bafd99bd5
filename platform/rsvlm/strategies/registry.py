"""Strategy names (``strategy.name`` in config) → classes."""

from __future__ import annotations

from rsvlm.config.strategy import StrategyConfig, StrategyName
from rsvlm.strategies.align import AlignStrategy
from rsvlm.strategies.base import Strategy
from rsvlm.strategies.full import FullStrategy
from rsvlm.strategies.lora import LoraStrategy
from rsvlm.strategies.moe_lora import MoeLoraStrategy

STRATEGIES: dict[StrategyName, type] = {
    StrategyName.full: FullStrategy,
    StrategyName.lora: LoraStrategy,
    StrategyName.moe_lora: MoeLoraStrategy,
    StrategyName.align: AlignStrategy,
}


def build_strategy(config: StrategyConfig) -> Strategy:
    """The strategy object for ``config``."""
    return STRATEGIES[config.name](config)
