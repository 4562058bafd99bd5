"""Mixed precision: bf16 autocast over fp32 master weights of what trains."""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
from torch import nn

from peft.tuners.tuners_utils import BaseTunerLayer

from rsvlm.config.training import MixedPrecision
from rsvlm.strategies.moe_lora.layer import MoeLoraLinear


def autocast_dtype(precision: MixedPrecision, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``; ``auto`` is bf16 on GPUs that have it, else none."""
    if precision is MixedPrecision.bf16:
        return torch.bfloat16
    if precision is MixedPrecision.auto and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(dtype: Optional[torch.dtype], device: torch.device) -> ContextManager:
    """Mixed-precision autocast on ``device`` (None: full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def keep_trainable_in_fp32(model: nn.Module) -> None:
    """fp32 master weights: what trains is held (and updated by AdamW) in fp32; autocast computes in bf16.

    Frozen weights stay in the dtype they were loaded in (``model.dtype``), which is where the memory is.
    """
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def prepare_for_autocast(model: nn.Module) -> None:
    """Get ``model`` ready to train under bf16 autocast: fp32 master weights of what trains
    (:func:`keep_trainable_in_fp32`), and adapter layers that hand their input to autocast as it is.

    An adapter layer casts its input to its adapter's dtype (peft's ``cast_input_dtype_enabled``, honoured
    by ``MoeLoraLinear`` too). With fp32 masters under autocast that is a full-width fp32 copy of every
    adapted layer's input, which autocast then casts back to bf16 for the matmul: about 10 % of a LoRA step
    on a bf16 model (bench/lora_profile.py). Without autocast the cast is needed, so it stays on there.
    """
    keep_trainable_in_fp32(model)
    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, MoeLoraLinear)):
            module.cast_input_dtype_enabled = False
