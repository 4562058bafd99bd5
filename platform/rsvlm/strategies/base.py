"""The strategy protocol, and per-part trainability shared by every strategy."""

from __future__ import annotations

import re
from pathlib import Path
from abc import ABC, abstractmethod
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from rsvlm.config.strategy import StrategyConfig, Trainability
from rsvlm.model.parts import model_parts


class Strategy(ABC):
    """How a base model is adapted, which tensors train, and how the result is saved and loaded back.

    Like peft's ``BaseTuner``, the base holds what most strategies share: no auxiliary loss, no dependence
    on the batch's tasks, nothing to fold in when merging. A strategy overrides what it does differently.
    """

    def __init__(self, config: StrategyConfig):
        self.config = config

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """Wrap or modify ``model`` for training and set ``requires_grad`` on what trains."""

    @abstractmethod
    def save(self, model: nn.Module, directory: Path, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """Write the trained weights (safetensors only) into ``directory``.

        ``state_dict`` is the model's whole state gathered from a sharded (FSDP) model; None reads ``model``'s.
        """

    @abstractmethod
    def load(self, base_model: nn.Module, directory: Path) -> nn.Module:
        """``base_model`` with the weights saved in ``directory`` applied."""

    @abstractmethod
    def restore(self, model: nn.Module, directory: Path) -> None:
        """Load the weights saved in ``directory`` into ``model``, which :meth:`apply` prepared (resuming)."""

    def aux_loss(self, model: nn.Module) -> Optional[torch.Tensor]:
        """An extra loss term added to the language-model loss; None: the strategy has none."""
        return None

    def merge(self, model: nn.Module, task: Optional[str] = None) -> nn.Module:
        """A plain transformers model computing the same function (adapters folded in).

        ``task`` picks the task whose function is folded in where the adapter depends on it (MoE-LoRA with
        task routing); strategies without task-dependent weights ignore it.
        """
        return model

    def set_batch_tasks(self, model: nn.Module, tasks: Sequence[str]) -> None:
        """Tell ``model`` the task of each row of the next batch; only task-routed adapters use it."""


def apply_trainability(model: nn.Module, config: StrategyConfig) -> None:
    """``requires_grad`` per part: ``full`` trains the part, ``frozen`` and ``adapter`` freeze its base weights."""
    for part, modules in model_parts(model).items():
        trains = getattr(config, part) is Trainability.full
        for _, module in modules:
            module.requires_grad_(trains)


def adapter_targets(model: nn.Module, config: StrategyConfig) -> tuple[str, list[str]]:
    """Where an adapter strategy puts its adapters, and which modules it trains and saves whole.

    Returns ``(targets, full_modules)``: a regular expression matching the qualified names of the LLM's
    linear layers to adapt (every one except lm_head, LLaVA's recipe, or those whose leaf name is in
    ``config.target_modules``), and the qualified names of the vision tower / projector modules configured
    ``full``. Targets are found from the model's own modules, not hard-coded names.
    """
    parts = model_parts(model)
    (llm_prefix, llm), _head = parts["llm"]
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in llm.named_modules() if isinstance(module, nn.Linear)})
    wanted = config.target_modules or leaves
    unknown = sorted(set(wanted) - set(leaves))
    if unknown:
        raise ValueError(f"strategy.target_modules {unknown} are not linear layers of the LLM; it has {leaves}")
    targets = rf"^{re.escape(llm_prefix)}\..*\.({'|'.join(map(re.escape, wanted))})$"
    full_modules = [name for part in ("vision_tower", "projector")
                    if getattr(config, part) is Trainability.full for name, _ in parts[part]]
    return targets, full_modules
