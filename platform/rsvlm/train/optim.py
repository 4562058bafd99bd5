"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from rsvlm.config.training import OptimConfig
from rsvlm.model.parts import part_of_parameter


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; the projector gets ``projector_lr`` (LLaVA trains it at its own rate).

    Biases and norm weights (1-D tensors) get no weight decay.
    """
    owner = part_of_parameter(model)
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_projector = owner.get(name) == "projector" or ".multi_modal_projector." in f".{name}"
        lr = cfg.projector_lr if is_projector and cfg.projector_lr is not None else cfg.lr
        decay = cfg.weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(parameter)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(
        [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()],
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's lr over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
