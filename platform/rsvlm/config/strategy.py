"""Fine-tuning strategy settings (``strategy`` group): full, LoRA or MoE-LoRA, and what each part of the
model trains."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from rsvlm.config.checks import require
from rsvlm.config.errors import ConfigError


class StrategyName(Enum):
    """``align`` is LLaVA's stage 1 (feature alignment: the projector trained with the rest frozen; the random
    tiny model trains every part); the others instruction-tune (stage 2)."""

    full = "full"
    lora = "lora"
    moe_lora = "moe_lora"
    align = "align"


class Routing(Enum):
    """How MoE-LoRA picks experts: per token (a linear router on the layer input) or per task (MOELoRA)."""

    token = "token"
    task = "task"


class RankSplit(Enum):
    """What ``strategy.rank`` means for MoE-LoRA: the total rank shared by the experts (MOELoRA), or each one's."""

    total = "total"
    per_expert = "per_expert"


class Trainability(Enum):
    """How one part of the model (vision tower, projector, LLM) is trained."""

    frozen = "frozen"
    full = "full"
    adapter = "adapter"


@dataclass
class StrategyConfig:
    """Fine-tuning strategy and per-part trainability. LoRA fields are ignored by ``full``."""

    name: StrategyName = StrategyName.lora
    vision_tower: Trainability = Trainability.frozen
    projector: Trainability = Trainability.full
    llm: Trainability = Trainability.adapter
    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    # Leaf names of the LLM's linear layers to adapt; empty = every linear layer of the LLM (LLaVA's recipe).
    target_modules: list[str] = field(default_factory=list)
    # MoE-LoRA (ignored by the others). top_k None = dense (every expert, softmax-weighted).
    num_experts: int = 4
    rank_split: RankSplit = RankSplit.total
    top_k: Optional[int] = None
    routing: Routing = Routing.token
    aux_loss_coef: float = 0.01
    # Task names for routing=task, in gate order; empty = the prepared dataset's tasks (filled by finetune).
    tasks: list[str] = field(default_factory=list)

    @property
    def expert_rank(self) -> int:
        """Each MoE-LoRA expert's rank."""
        return self.rank // self.num_experts if self.rank_split is RankSplit.total else self.rank

    def __post_init__(self) -> None:
        adapters = self.name in (StrategyName.lora, StrategyName.moe_lora)
        for part in ("vision_tower", "projector", "llm"):
            value = getattr(self, part)
            if value is Trainability.adapter and not adapters:
                raise ConfigError(f"strategy.{part}", f"'adapter' needs an adapter strategy, not '{self.name.value}'",
                                  [t.value for t in Trainability if t is not Trainability.adapter])
        if adapters:
            require(self.llm is Trainability.adapter, "strategy.llm",
                    f"must be 'adapter' for strategy '{self.name.value}'", ["adapter"])
            require(self.rank > 0, "strategy.rank", "must be > 0")
            require(self.alpha > 0, "strategy.alpha", "must be > 0")
            require(0.0 <= self.dropout < 1.0, "strategy.dropout", "must be in [0, 1)")
        if self.name is StrategyName.moe_lora:
            require(self.num_experts >= 1, "strategy.num_experts", "must be >= 1")
            require(self.expert_rank >= 1, "strategy.rank",
                    f"{self.rank} split across {self.num_experts} experts leaves none (rank_split=total)")
            require(self.rank_split is RankSplit.per_expert or self.rank % self.num_experts == 0, "strategy.rank",
                    f"must be a multiple of strategy.num_experts={self.num_experts} with rank_split=total")
            require(self.top_k is None or 1 <= self.top_k <= self.num_experts, "strategy.top_k",
                    f"must be in [1, num_experts={self.num_experts}] or null (dense)")
            require(self.aux_loss_coef >= 0, "strategy.aux_loss_coef", "must be >= 0")
        require(any(getattr(self, p) is not Trainability.frozen for p in ("vision_tower", "projector", "llm")),
                "strategy", "every part is frozen: nothing would train")


@dataclass
class AlignConfig:
    """Stage 1 as the pipeline (``make demo``) runs it before instruction tuning: the align strategy on
    image-caption records at LLaVA's pretraining lr; the stage-2 run starts from its checkpoint."""

    enabled: bool = True
    max_steps: int = 200
    lr: float = 1e-3
    # The records it trains on (data.tasks of the stage-1 run).
    tasks: list[str] = field(default_factory=lambda: ["caption"])
    # Its micro-batch per worker (an optimizer step each, no accumulation); null = train.micro_batch_size and
    # train.global_batch_size, as stage 2 has them.
    micro_batch_size: Optional[int] = None
    # How stage 1 trains the vision tower and the LLM. null = auto: frozen for a pretrained model (LLaVA's
    # recipe: only the projector learns), full for the tiny model, which is random throughout: a frozen
    # random LLM cannot learn to caption and a frozen random tower sees nothing, so its stage 1 trains every
    # part on captions, a stand-in for the pretraining a real checkpoint has.
    vision_tower: Optional[Trainability] = None
    llm: Optional[Trainability] = None

    def __post_init__(self) -> None:
        require(self.max_steps > 0, "align.max_steps", "must be > 0")
        require(self.lr > 0, "align.lr", "must be > 0")
        require(self.micro_batch_size is None or self.micro_batch_size > 0, "align.micro_batch_size",
                "must be > 0 or null")
        require(bool(self.tasks), "align.tasks", "must name at least one task, e.g. [caption]")
        for part in ("vision_tower", "llm"):
            require(getattr(self, part) is not Trainability.adapter, f"align.{part}", "must be frozen, full or null",
                    ["frozen", "full", None])
