"""Stage 1, feature alignment (LLaVA's ``pretrain_mm_mlp_adapter``): the parts configured ``full`` train (the
projector, with the LLM and vision tower frozen, for a pretrained model; every part for the random tiny model).

The checkpoint holds only those parts, in ``aligned_parts.safetensors`` keyed by the base model's own
parameter names: a stage-2 run loads them with ``model.init_from`` before its strategy is applied
(:func:`rsvlm.strategies.checkpoint.init_weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rsvlm.config.strategy import Trainability
from rsvlm.model.parts import model_parts
from rsvlm.strategies.base import Strategy, apply_trainability

ALIGNED_PARTS_FILE = "aligned_parts.safetensors"


class AlignStrategy(Strategy):
    def apply(self, model: nn.Module) -> nn.Module:
        apply_trainability(model, self.config)
        return model

    def trained_prefixes(self, model: nn.Module) -> list[str]:
        """The qualified names of the modules stage 1 trains (the parts configured ``full``)."""
        parts = model_parts(model)
        return [name for part in ("vision_tower", "projector", "llm")
                if getattr(self.config, part) is Trainability.full for name, _ in parts[part]]

    def save(self, model: nn.Module, directory: Path, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        state = state_dict if state_dict is not None else model.state_dict()
        prefixes = tuple(f"{prefix}." for prefix in self.trained_prefixes(model))
        tensors = {key: value.detach().contiguous().cpu() for key, value in state.items() if key.startswith(prefixes)}
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(Path(directory) / ALIGNED_PARTS_FILE), metadata={"format": "pt"})

    def load(self, base_model: nn.Module, directory: Path) -> nn.Module:
        self.restore(base_model, directory)
        return base_model

    def restore(self, model: nn.Module, directory: Path) -> None:
        load_parts(model, load_file(str(Path(directory) / ALIGNED_PARTS_FILE)), Path(directory) / ALIGNED_PARTS_FILE)


def load_parts(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Copy ``tensors`` (some of the model's own parameters, by name) into ``model``; a name it lacks is an error."""
    result = model.load_state_dict(dict(tensors), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{source} does not fit the model: unexpected {sorted(result.unexpected_keys)[:5]}")
