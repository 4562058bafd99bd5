"""One optimisation step, free of Ray, ranks and logging so it can be tested on its own."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Optional, Sequence

import torch
from torch import nn

from rsvlm.data.template import IGNORE_INDEX
from rsvlm.train.precision import autocast

MicroBatch = tuple[dict[str, torch.Tensor], Sequence[str]]  # model inputs, and each row's task


def train_step(
    model: nn.Module,
    micro_batches: Sequence[MicroBatch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    aux_loss: Optional[Callable[[nn.Module], Optional[torch.Tensor]]] = None,
    set_batch_tasks: Optional[Callable[[nn.Module, Sequence[str]], None]] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    gradient_sync: Callable[[bool], ContextManager] = lambda enabled: nullcontext(),
) -> dict[str, float]:
    """Forward and backward each micro-batch, then clip and step once.

    Each micro-batch's loss is divided by their number, so the summed gradients are the mean over the step
    (what one batch of the global size would give). ``gradient_sync(False)`` wraps all but the last
    micro-batch: data-parallel workers average gradients once per step, not per micro-batch. Returns the
    mean language-model loss, aux loss, grad norm, lr used and the token counts.
    """
    model.train()
    count = len(micro_batches)
    device = micro_batches[0][0]["input_ids"].device
    losses, extras, tokens = [], [], 0
    for index, (inputs, tasks) in enumerate(micro_batches):
        if set_batch_tasks is not None:
            set_batch_tasks(model, tasks)
        with gradient_sync(index == count - 1):
            with autocast(autocast_dtype, device):
                loss = model(**inputs).loss
                extra = aux_loss(model) if aux_loss is not None else None
            total = loss + extra if extra is not None else loss
            (total / count).backward()
        losses.append(loss.detach())
        if extra is not None:
            extras.append(extra.detach())
        tokens += int(inputs["attention_mask"].sum())
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor; its full value is the global norm
        grad_norm = grad_norm.full_tensor()
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    # One host sync for all the losses, after the step, instead of one per micro-batch.
    metrics = {"loss": torch.stack(losses).mean().item(), "grad_norm": float(grad_norm), "lr": lr,
               "tokens": float(tokens)}
    if extras:
        metrics["aux_loss"] = torch.stack(extras).mean().item()
    return metrics


@torch.no_grad()
def validation_loss(model: nn.Module, batches: Iterable[MicroBatch], autocast_dtype: Optional[torch.dtype] = None,
                    set_batch_tasks: Optional[Callable[[nn.Module, Sequence[str]], None]] = None) -> tuple[float, int]:
    """``(sum of per-token losses, supervised tokens)`` over ``batches``, so workers' results add up exactly."""
    model.eval()
    loss_sum, token_count = 0.0, 0
    for inputs, tasks in batches:
        if set_batch_tasks is not None:
            set_batch_tasks(model, tasks)
        # The model's loss is the mean over tokens whose next-token label is supervised.
        supervised = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        if supervised == 0:
            continue
        with autocast(autocast_dtype, inputs["input_ids"].device):
            loss = model(**inputs).loss
        loss_sum += float(loss) * supervised
        token_count += supervised
    model.train()
    return loss_sum, token_count
