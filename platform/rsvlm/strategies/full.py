"""Full fine-tuning: the configured parts train entirely; the checkpoint is a complete transformers model."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from rsvlm.strategies.base import Strategy, apply_trainability


class FullStrategy(Strategy):
    def apply(self, model: nn.Module) -> nn.Module:
        apply_trainability(model, self.config)
        return model

    def save(self, model: nn.Module, directory: Path, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """A whole transformers model."""
        model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)

    def load(self, base_model: nn.Module, directory: Path) -> nn.Module:
        # The folder is a whole model: load it with the base model's class, weights from the checkpoint.
        return type(base_model).from_pretrained(directory, dtype=base_model.dtype)

    def restore(self, model: nn.Module, directory: Path) -> None:
        # Through from_pretrained, which reads single-file and sharded weights alike and maps saved key
        # names back to the module's; it costs a second copy of the model in memory, once per resume.
        model.load_state_dict(self.load(model, directory).state_dict())
