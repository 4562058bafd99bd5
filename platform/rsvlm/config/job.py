"""The whole configuration of a job: one field per Hydra group (each typed in its own module), and the
checks that span groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rsvlm.config.checks import require
from rsvlm.config.data import DataConfig
from rsvlm.config.evaluation import BenchmarkConfig
from rsvlm.config.model import ModelConfig
from rsvlm.config.storage import StorageConfig
from rsvlm.config.strategy import AlignConfig, StrategyConfig, StrategyName
from rsvlm.config.sweep import SweepConfig
from rsvlm.config.tracking import TrackingConfig
from rsvlm.config.training import OptimConfig, ScalingConfig, Sharding, TrainConfig


@dataclass
class ExportConfig:
    """What ``jobs/export.py`` writes: a plain transformers model with the adapters merged in."""

    # The folder to create (local); required by export, which refuses an existing one.
    output: Optional[str] = None
    # The task whose function is merged, for adapters that depend on it (MoE-LoRA with routing=task).
    task: Optional[str] = None


@dataclass
class JobConfig:
    """The whole configuration of any rsvlm job (each job reads the parts it needs)."""

    workdir: str = "runs"
    # Ray cluster to join; None = a cluster already set by RAY_ADDRESS / `ray job submit`, else a local one.
    ray_address: Optional[str] = None
    # What evaluate / register act on: models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/<path>,
    # a checkpoint folder, or "base" for the untrained model.
    model_uri: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    align: AlignConfig = field(default_factory=AlignConfig)

    def __post_init__(self) -> None:
        require(self.scaling.sharding is Sharding.ddp or self.strategy.name is StrategyName.full,
                "scaling.sharding", f"fsdp shards full fine-tuning only, not strategy '{self.strategy.name.value}'",
                ["ddp"])
        require(self.scaling.num_workers > 0 or not self.train.storage_uri.startswith("s3://"), "train.storage_uri",
                "local mode (scaling.num_workers=0) writes checkpoints to a local folder, not s3://")
        per_step = self.train.micro_batch_size * self.scaling.workers
        require(self.train.global_batch_size is None or self.train.global_batch_size % per_step == 0,
                "train.global_batch_size",
                f"must be a multiple of train.micro_batch_size × workers = {self.train.micro_batch_size} × "
                f"{self.scaling.workers} = {per_step}")

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-batches each worker accumulates per optimizer step to reach ``train.global_batch_size``."""
        if self.train.global_batch_size is None:
            return 1
        return self.train.global_batch_size // (self.train.micro_batch_size * self.scaling.workers)

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all workers."""
        return self.train.micro_batch_size * self.scaling.workers * self.gradient_accumulation_steps

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or f"rsvlm-{self.model.name}-{self.strategy.name.value}"

    @property
    def target_model_uri(self) -> str:
        """What evaluate / export act on: ``model_uri``, else the registered model at ``tracking.alias``."""
        return self.model_uri or f"models:/{self.registered_model_name}@{self.tracking.alias}"
