"""The strategy protocol, and per-part trainability shared by every strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import torch
from torch import nn

from rsvlm.config.schema import StrategyConfig, Trainability
from rsvlm.model.parts import PARTS, model_parts, part_of_parameter


class Strategy(Protocol):
    """How a base model is adapted, which tensors train, and how the result is saved and loaded back."""

    config: StrategyConfig

    def apply(self, model: nn.Module) -> nn.Module:
        """Wrap or modify ``model`` for training and set ``requires_grad`` on what trains."""

    def aux_loss(self, model: nn.Module) -> Optional[torch.Tensor]:
        """An extra loss term added to the language-model loss (None when the strategy has none)."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained weights (safetensors only) into ``directory``."""

    def load(self, base_model: nn.Module, directory: Path) -> nn.Module:
        """``base_model`` with the weights saved in ``directory`` applied."""

    def merge(self, model: nn.Module) -> nn.Module:
        """A plain transformers model computing the same function (adapters folded in)."""


def apply_trainability(model: nn.Module, config: StrategyConfig) -> None:
    """``requires_grad`` per part: ``full`` trains the part, ``frozen`` and ``adapter`` freeze its base weights."""
    for part, modules in model_parts(model).items():
        trains = getattr(config, part) is Trainability.full
        for _, module in modules:
            module.requires_grad_(trains)


def trainable_parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{part: {"trainable": n, "total": n}}`` for vision tower, projector and LLM (adapters count to their part)."""
    owner = part_of_parameter(model)
    counts = {part: {"trainable": 0, "total": 0} for part in PARTS}
    for name, parameter in model.named_parameters():
        part = owner.get(name)
        if part is None:
            continue
        counts[part]["total"] += parameter.numel()
        if parameter.requires_grad:
            counts[part]["trainable"] += parameter.numel()
    return counts
