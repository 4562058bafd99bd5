"""LoRA on the LLM through peft, LLaVA's recipe: every linear layer of the LLM except lm_head.

Parts configured ``full`` (the projector by default) are peft ``modules_to_save``, so they are saved in the
same ``adapter_model.safetensors`` as the adapter and restored with it: a LLaVA LoRA checkpoint that loses
its projector (LLaVA#808, #784, #1416) cannot happen here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file
from torch import nn

from rsvlm.strategies.base import Strategy, adapter_targets


class LoraStrategy(Strategy):
    def peft_config(self, model: nn.Module) -> LoraConfig:
        """The peft config for ``model``: targets found from the model's own modules, not hard-coded names."""
        targets, full_parts = adapter_targets(model, self.config)
        return LoraConfig(
            r=self.config.rank,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=targets,
            modules_to_save=full_parts or None,
            bias="none",
        )

    def apply(self, model: nn.Module) -> nn.Module:
        # peft freezes the whole base model and re-enables adapters and modules_to_save. Its default upcasts
        # the adapters of a bf16 model to fp32, so every adapted layer casts its input to fp32 and runs its
        # adapter matmuls in fp32: on a GPU (and on a CPU with AMX) that made LoRA slower than full
        # fine-tuning (bench/lora_profile.py). Adapters start in the base model's dtype, as MoE-LoRA's do;
        # fp32 master weights are the precision recipe's job (rsvlm.train.precision.prepare_for_autocast).
        return get_peft_model(model, self.peft_config(model), autocast_adapter_dtype=False)

    def save(self, model: nn.Module, directory: Path, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        # peft picks the adapter's (and modules_to_save's) tensors out of a whole state_dict itself.
        model.save_pretrained(directory, state_dict=dict(state_dict) if state_dict is not None else None,
                              safe_serialization=True)

    def load(self, base_model: nn.Module, directory: Path) -> nn.Module:
        # The adapters in the base model's dtype, as apply makes them (see there).
        return PeftModel.from_pretrained(base_model, directory, autocast_adapter_dtype=False)

    def restore(self, model: nn.Module, directory: Path) -> None:
        weights = load_file(str(Path(directory) / SAFETENSORS_WEIGHTS_NAME))
        result = set_peft_model_state_dict(model, weights)
        if result.unexpected_keys:
            raise ValueError(f"{directory / SAFETENSORS_WEIGHTS_NAME} does not fit the model: unexpected "
                             f"{sorted(result.unexpected_keys)[:5]}")

    def merge(self, model: nn.Module, task: Optional[str] = None) -> nn.Module:
        return model.merge_and_unload()
