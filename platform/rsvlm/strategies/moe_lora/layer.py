"""One MoE-LoRA layer: a frozen linear layer plus a mixture of LoRA experts, computed in one batched pass.

Published MoE-LoRA code (MOELoRA, CoIN) loops over experts in Python, so each expert runs two small matmuls
and keeps its own full-width activation for backward. Here the experts' A matrices are stacked into one
``[E*r, in]`` weight and their B matrices into one ``[out, E*r]`` weight: the whole mixture is two matmuls
whatever the number of experts, with the gate applied to the ``[..., E, r]`` intermediate in between.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from rsvlm.config.strategy import Routing


def top_k_weights(probs: torch.Tensor, top_k: Optional[int]) -> torch.Tensor:
    """Gate weights from routing probabilities ``[..., E]``: the ``top_k`` largest kept and renormalised to
    sum to 1, the rest zero; ``probs`` unchanged when ``top_k`` is None or E (dense)."""
    if top_k is None or top_k >= probs.shape[-1]:
        return probs
    values, index = probs.topk(top_k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, index, values / values.sum(-1, keepdim=True))


def load_balancing_loss(probs: torch.Tensor, weights: torch.Tensor, top_k: Optional[int]) -> torch.Tensor:
    """Switch / Mixtral load-balancing loss ``E * sum_e(f_e * P_e)`` over every row of ``probs`` ``[..., E]``.

    ``P_e`` is the mean routing probability of expert e (the full softmax, so every router logit gets a
    gradient, even with top-1). ``f_e`` is the share of the routing that expert e received: for dense
    routing the mean gate weight, which is ``P_e`` itself, so the loss is ``E * sum_e(P_e^2)``: at least 1,
    and exactly 1 only when the mean routing is uniform (Cauchy–Schwarz). For top-k it is the fraction of
    the k selections per token that went to e (not differentiable, as in Switch and Mixtral); the loss is 1
    when either the selections or the probabilities are spread evenly, and grows as both pile on the same
    experts.
    """
    experts = probs.shape[-1]
    probs = probs.reshape(-1, experts).float()
    mean_prob = probs.mean(0)
    if top_k is None or top_k >= experts:
        share = mean_prob
    else:
        share = (weights.reshape(-1, experts) > 0).float().mean(0) / top_k
    return experts * (share * mean_prob).sum()


class _AddAuxLossGradient(torch.autograd.Function):
    """Identity on a layer's output that, in the backward pass, also sends ``coef`` as the gradient of the
    layer's auxiliary loss (Megatron-LM's ``MoEAuxLossAutoScaler``): the loss joins the training objective
    without the caller holding its graph. Assumes the objective is not rescaled (no gradient accumulation
    divisor); a scaled objective needs the same scale here."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux_loss: torch.Tensor, coef: float) -> torch.Tensor:
        ctx.save_for_backward(aux_loss)
        ctx.coef = coef
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (aux_loss,) = ctx.saved_tensors
        return grad_output, torch.full_like(aux_loss, ctx.coef), None


class MoeLoraLinear(nn.Module):
    """``base(x) + scaling * B (g ⊗ 1_r ⊙ A dropout(x))``: ``E`` LoRA experts of rank ``r`` mixed by gates ``g``.

    Weights: ``lora_A.weight`` ``[E*r, in]`` (expert e's A is rows ``e*r:(e+1)*r``), ``lora_B.weight``
    ``[out, E*r]`` (expert e's B is columns ``e*r:(e+1)*r``), and either ``router.weight`` ``[E, in]``
    (routing=token: softmax of a linear map of the layer input, per token) or ``task_gates`` ``[tasks, E]``
    (routing=task: one softmax over experts per task, as MOELoRA; the task of each row is given with
    :meth:`set_task_ids` before the forward). ``top_k`` keeps each row's k largest gates, renormalised.

    Scaling is ``alpha / r`` with ``r`` the rank of one expert. One expert is then exactly a LoRA of rank r
    and the same alpha; since the gates sum to 1 the mixture is a convex combination of such LoRAs; and with
    uniform gates E experts of rank R/E (``rank_split: total``) compute exactly a LoRA of rank R and the
    same alpha (``alpha/(R/E) * (1/E) * sum_e B_e A_e = alpha/R * B A``), so switching LoRA to MoE-LoRA
    keeps the update's scale. MOELoRA-peft (liuqidong07/MOELoRA-peft, mmoelora.py) divides by the total
    rank E*r instead, which makes its mixture E times weaker than that LoRA.

    A task id of -1 (unknown), or no task ids at all, uses the mean of all tasks' gates: the adapter a model
    serves when it is not told the task, and what :meth:`merge` folds in for ``task_index=None``.

    A is kaiming-uniform and B zero, as in LoRA, so the adapted layer starts equal to the base layer. In
    training mode each forward stores its load-balancing loss (:func:`load_balancing_loss`), detached, in
    ``aux_loss`` for logging, and adds ``aux_loss_coef`` × its gradient through the output,
    over every position of the input (padding included: the layer does not see the attention mask) for
    token routing, over the rows for task routing.
    """

    # The input is cast to the adapters' dtype, unless autocast does it (rsvlm.train.precision.prepare_for_autocast;
    # the same switch as peft's layers).
    cast_input_dtype_enabled = True

    def __init__(self, base_layer: nn.Linear, num_experts: int, expert_rank: int, alpha: float,
                 dropout: float = 0.0, top_k: Optional[int] = None, routing: Routing = Routing.token,
                 num_tasks: int = 0, aux_loss_coef: float = 0.0):
        super().__init__()
        if routing is Routing.task and num_tasks < 1:
            raise ValueError("routing=task needs at least one task")
        self.base_layer = base_layer
        self.num_experts = num_experts
        self.expert_rank = expert_rank
        self.scaling = alpha / expert_rank
        self.aux_loss_coef = aux_loss_coef
        self.top_k = None if top_k is None or top_k >= num_experts else top_k
        self.routing = Routing(routing)
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, num_experts * expert_rank, bias=False, **factory)
        self.lora_B = nn.Linear(num_experts * expert_rank, base_layer.out_features, bias=False, **factory)
        if self.routing is Routing.token:
            self.router = nn.Linear(base_layer.in_features, num_experts, bias=False, **factory)
        else:
            # Zero logits: every task starts with uniform gates.
            self.task_gates = nn.Parameter(torch.zeros(num_tasks, num_experts, **factory))
        self.task_ids: Optional[torch.Tensor] = None
        self.aux_loss: Optional[torch.Tensor] = None
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def set_task_ids(self, task_ids: Optional[torch.Tensor]) -> None:
        """The task index of each row of the next inputs (-1 = unknown); None = unknown for every row.

        They stay set until the next call (a checkpointed layer recomputes its forward in the backward pass).
        """
        self.task_ids = None if task_ids is None else torch.as_tensor(task_ids, dtype=torch.long)

    def task_gate_weights(self) -> torch.Tensor:
        """``[tasks + 1, E]``: each task's gate weights, and last the mean of them all (for unknown tasks)."""
        weights = top_k_weights(torch.softmax(self.task_gates.float(), dim=-1), self.top_k)
        return torch.cat([weights, weights.mean(0, keepdim=True)])

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, weights)`` for input ``x`` ``[..., in]``: the softmax over experts and the gate weights
        actually applied (after top-k), float32. Token routing gives ``[..., E]``; task routing ``[rows, E]``."""
        if self.routing is Routing.token:
            probs = torch.softmax(self.router(x).float(), dim=-1)
            return probs, top_k_weights(probs, self.top_k)
        probs_table = torch.softmax(self.task_gates.float(), dim=-1)
        probs_table = torch.cat([probs_table, probs_table.mean(0, keepdim=True)])
        weights_table = self.task_gate_weights()
        rows = self._row_indices(x)
        return probs_table[rows], weights_table[rows]

    def _row_indices(self, x: torch.Tensor) -> torch.Tensor:
        unknown = self.task_gates.shape[0]
        rows = x.shape[0] if x.dim() > 1 else 1
        if self.task_ids is None:
            return torch.full((rows,), unknown, dtype=torch.long, device=x.device)
        if self.task_ids.device != x.device:
            self.task_ids = self.task_ids.to(x.device)  # kept there: the backward's recompute reuses it
        ids = self.task_ids
        if ids.shape != (rows,):
            raise ValueError(f"task ids for {tuple(ids.shape)} rows, but the input has {rows} rows")
        return torch.where((ids >= 0) & (ids < unknown), ids, torch.full_like(ids, unknown))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        probs, weights = self.route(x)
        self.aux_loss = None
        if self.training:
            balance = load_balancing_loss(probs, weights, self.top_k)
            # Kept detached, for logging only: a stored graph would pin this layer's activations, and under
            # gradient checkpointing those of every recomputed layer, until the next step (measured: more
            # memory with checkpointing than without). The gradient rides on the output instead.
            self.aux_loss = balance.detach()
            if self.aux_loss_coef and torch.is_grad_enabled():
                result = _AddAuxLossGradient.apply(result, balance, self.aux_loss_coef)
        if self.routing is Routing.task:  # one gate row per input row: broadcast over the other axes
            rows = () if x.dim() == 1 else (x.shape[0], *([1] * (x.dim() - 2)))
            weights = weights.view(*rows, self.num_experts)
        dtype = self.lora_A.weight.dtype
        if self.cast_input_dtype_enabled:
            x = x.to(dtype)
        hidden = self.lora_A(self.lora_dropout(x))
        hidden = hidden.unflatten(-1, (self.num_experts, self.expert_rank)) * weights.to(dtype).unsqueeze(-1)
        return result + (self.lora_B(hidden.flatten(-2)) * self.scaling).to(result.dtype)

    def delta_weight(self, task_index: Optional[int]) -> torch.Tensor:
        """``scaling * B diag(g ⊗ 1_r) A`` ``[out, in]`` for the gates ``g`` of task ``task_index``
        (None = the mean gates). Only task routing has input-independent gates to fold in."""
        if self.routing is not Routing.task:
            raise ValueError("token-routed MoE-LoRA cannot be merged: its expert weights depend on each input")
        gates = self.task_gate_weights()[-1 if task_index is None else task_index]
        per_row = gates.to(self.lora_A.weight.dtype).repeat_interleave(self.expert_rank)
        return self.scaling * (self.lora_B.weight @ (per_row[:, None] * self.lora_A.weight))

    def merge(self, task_index: Optional[int]) -> nn.Linear:
        """The base layer with task ``task_index``'s experts folded into its weight (modified in place)."""
        delta = self.delta_weight(task_index)
        with torch.no_grad():
            self.base_layer.weight.add_(delta.to(self.base_layer.weight.dtype))
        return self.base_layer

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, expert_rank={self.expert_rank}, scaling={self.scaling:g}, "
                f"top_k={self.top_k}, routing={self.routing.value}")
