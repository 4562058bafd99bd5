"""MoE-LoRA: a mixture of LoRA experts on every adapted linear layer of the LLM, routed per token or per task.

RS-GPT4V reports MoE-LoRA ahead of LoRA and full fine-tuning on grounding; peft has no native MoE-LoRA
(peft#1156, #2330), so this package is shaped like a peft tuner of its own: a config saved beside the
weights (``config.py``), the layer (``layer.py``), and inject / save / load / merge functions (``model.py``).
Its checkpoints hold the experts, the routers or task gates, and the parts configured ``full`` (the
projector by default) in one ``adapter_model.safetensors``, as the LoRA strategy's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from rsvlm.config.strategy import Routing
from rsvlm.strategies.base import Strategy
from rsvlm.strategies.moe_lora.config import MoeLoraConfig
from rsvlm.strategies.moe_lora.layer import MoeLoraLinear, load_balancing_loss, top_k_weights
from rsvlm.strategies.moe_lora.model import (
    aux_loss,
    inject_moe_lora,
    load_moe_lora,
    load_moe_lora_weights,
    merge_moe_lora,
    moe_layers,
    moe_lora_config,
    moe_state_dict,
    save_moe_lora,
    set_task_ids,
    task_ids,
)

__all__ = ["MoeLoraConfig", "MoeLoraLinear", "MoeLoraStrategy", "aux_loss", "inject_moe_lora",
           "load_balancing_loss", "load_moe_lora", "load_moe_lora_weights", "merge_moe_lora", "moe_layers", "moe_lora_config",
           "moe_state_dict", "save_moe_lora", "set_task_ids", "task_ids", "top_k_weights"]


class MoeLoraStrategy(Strategy):
    """The :class:`rsvlm.strategies.base.Strategy` for ``strategy.name: moe_lora``."""

    def apply(self, model: nn.Module) -> nn.Module:
        return inject_moe_lora(model, MoeLoraConfig.from_strategy(self.config, model))

    def aux_loss(self, model: nn.Module) -> Optional[torch.Tensor]:
        return aux_loss(model, self.config.aux_loss_coef)

    def save(self, model: nn.Module, directory: Path, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        save_moe_lora(model, directory, state_dict)

    def load(self, base_model: nn.Module, directory: Path) -> nn.Module:
        return load_moe_lora(base_model, directory)

    def restore(self, model: nn.Module, directory: Path) -> None:
        load_moe_lora_weights(model, directory)

    def merge(self, model: nn.Module, task: Optional[str] = None) -> nn.Module:
        return merge_moe_lora(model, task)

    def set_batch_tasks(self, model: nn.Module, tasks: Sequence[str]) -> None:
        """Route the next batch's rows by their task names (unknown names: the mean gates); token routing
        ignores them."""
        if self.config.routing is Routing.task:
            set_task_ids(model, task_ids(model, tasks))
