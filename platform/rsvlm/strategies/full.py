"""Full fine-tuning: the configured parts train entirely; the checkpoint is a complete transformers model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from rsvlm.config.schema import StrategyConfig
from rsvlm.strategies.base import apply_trainability


class FullStrategy:
    def __init__(self, config: StrategyConfig):
        self.config = config

    def apply(self, model: nn.Module) -> nn.Module:
        apply_trainability(model, self.config)
        return model

    def aux_loss(self, model: nn.Module) -> Optional[torch.Tensor]:
        return None

    def save(self, model: nn.Module, directory: Path, state_dict: Optional[dict] = None) -> None:
        """A whole transformers model; ``state_dict`` carries the gathered weights of an FSDP-sharded one."""
        model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)

    def load(self, base_model: nn.Module, directory: Path) -> nn.Module:
        # The folder is a whole model: load it with the base model's class, weights from the checkpoint.
        return type(base_model).from_pretrained(directory, dtype=base_model.dtype)

    def restore(self, model: nn.Module, directory: Path) -> None:
        # Through from_pretrained, which reads single-file and sharded weights alike and maps saved key
        # names back to the module's; it costs a second copy of the model in memory, once per resume.
        model.load_state_dict(self.load(model, directory).state_dict())

    def merge(self, model: nn.Module, task: Optional[str] = None) -> nn.Module:
        return model

    def set_batch_tasks(self, model: nn.Module, tasks: Sequence[str]) -> None:
        """Full fine-tuning does not depend on the task."""
