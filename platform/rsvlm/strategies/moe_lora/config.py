"""The MoE-LoRA adapter's own config, saved beside its weights so a folder loads without the job's config.

It plays the part of peft's ``LoraConfig``: everything needed to rebuild the adapter layers on a base model
(experts, ranks, routing, task names in gate order, targets, modules saved whole), and nothing about training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import nn

from rsvlm.config.strategy import Routing, StrategyConfig
from rsvlm.strategies.base import adapter_targets

CONFIG_FILE = "moe_lora_config.json"
# The fields that mean what the same-named ``strategy.*`` settings mean, copied from them by name. The
# defaults below are a neutral adapter (no dropout, dense, no aux loss) for building one by hand; a trained
# adapter's come from its StrategyConfig and are always written to the file.
SHARED_WITH_STRATEGY = ("num_experts", "expert_rank", "dropout", "top_k", "routing", "tasks", "aux_loss_coef")


@dataclass
class MoeLoraConfig:
    """How MoE-LoRA adapts a model: ``num_experts`` LoRA experts of rank ``expert_rank`` per target layer."""

    num_experts: int
    expert_rank: int
    alpha: float
    # Regular expression matched (in full) against qualified module names of the model.
    target_modules: str
    dropout: float = 0.0
    # None = dense: every expert, softmax-weighted.
    top_k: Optional[int] = None
    routing: Routing = Routing.token
    # Task names in gate order (routing=task).
    tasks: list[str] = field(default_factory=list)
    aux_loss_coef: float = 0.0
    # Qualified names of modules trained and saved whole (the parts configured ``full``).
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.alpha, self.routing, self.tasks = float(self.alpha), Routing(self.routing), list(self.tasks)
        if self.num_experts < 1 or self.expert_rank < 1:
            raise ValueError(f"num_experts ({self.num_experts}) and expert_rank ({self.expert_rank}) must be >= 1")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in [1, {self.num_experts}] or None, not {self.top_k}")
        if self.routing is Routing.task and not self.tasks:
            raise ValueError("routing=task needs the task names (strategy.tasks; finetune fills them from the "
                             "prepared dataset's tasks)")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task names repeat: {self.tasks}")

    @property
    def scaling(self) -> float:
        """``alpha / expert_rank``: see :class:`rsvlm.strategies.moe_lora.layer.MoeLoraLinear`."""
        return self.alpha / self.expert_rank

    @classmethod
    def from_strategy(cls, strategy: StrategyConfig, model: nn.Module) -> "MoeLoraConfig":
        """The config for ``model`` trained with ``strategy``; targets are discovered as LoRA's are."""
        targets, full_modules = adapter_targets(model, strategy)
        shared = {name: getattr(strategy, name) for name in SHARED_WITH_STRATEGY}
        return cls(**shared, alpha=strategy.alpha, target_modules=targets, modules_to_save=full_modules)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "routing": self.routing.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MoeLoraConfig":
        return cls(**data)

    def save(self, directory: Path) -> Path:
        """Write ``moe_lora_config.json`` into ``directory``."""
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> "MoeLoraConfig":
        """Read ``moe_lora_config.json`` from ``directory``."""
        return cls.from_dict(json.loads((Path(directory) / CONFIG_FILE).read_text()))
