"""Mixed precision: bf16 autocast over fp32 master weights of what trains."""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
from torch import nn

from rsvlm.config.training import MixedPrecision


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
