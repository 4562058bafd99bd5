"""One optimisation step, free of Ray, ranks and logging so it can be tested on its own."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


def train_step(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    aux_loss: Optional[Callable[[nn.Module], Optional[torch.Tensor]]] = None,
) -> dict[str, float]:
    """Forward, backward, clip, step. Returns the language-model loss, aux loss, grad norm and lr used."""
    model.train()
    outputs = model(**inputs)
    loss = outputs.loss
    extra = aux_loss(model) if aux_loss is not None else None
    total = loss + extra if extra is not None else loss
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor; its full value is the global norm
        grad_norm = grad_norm.full_tensor()
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr}
    if extra is not None:
        metrics["aux_loss"] = extra.item()
    return metrics
