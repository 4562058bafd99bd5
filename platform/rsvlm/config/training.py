"""Training settings: the optimizer (``optim``), the loop (``train``) and the Ray Train workers (``scaling``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from rsvlm.config.checks import require


class Sharding(Enum):
    """How several workers hold the model: whole replicas (DDP) or sharded parameters, grads and optimizer
    state (FSDP2, ``torch.distributed.fsdp.fully_shard``; full fine-tuning only)."""

    ddp = "ddp"
    fsdp = "fsdp"


class MixedPrecision(Enum):
    """Autocast for training. ``auto`` is bf16 on GPUs that support it and none on CPU; the trainable weights
    and the optimizer stay fp32 either way (fp32 master weights)."""

    auto = "auto"
    bf16 = "bf16"
    none = "none"


@dataclass
class OptimConfig:
    lr: float = 2e-4
    # LLaVA trains the projector with its own learning rate (2e-5 in the LoRA recipe); None = same as lr.
    projector_lr: Optional[float] = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", "must be > 0")
        require(self.projector_lr is None or self.projector_lr > 0, "optim.projector_lr", "must be > 0 or null")
        require(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", "must be in [0, 1)")
        require(self.max_grad_norm > 0, "optim.max_grad_norm", "must be > 0")


@dataclass
class TrainConfig:
    """The training loop: how long, how big a step, checkpoints, validation and failure handling."""

    # Optimizer steps. Set it to null and set `epochs` to derive it from the prepared dataset's size.
    max_steps: Optional[int] = 600
    epochs: Optional[float] = None
    micro_batch_size: int = 8
    # Samples per optimizer step over all workers; gradient accumulation makes up the difference from
    # micro_batch_size × workers. null = micro_batch_size × workers (no accumulation).
    global_batch_size: Optional[int] = None
    log_every: int = 50
    seed: int = 0
    # Names the run: its folder under storage_uri and its MLflow run. Running again with the same name resumes
    # from the run's latest checkpoint and appends to the same MLflow run. null = <registered model>-<time>-<random>.
    run_name: Optional[str] = None
    # Where checkpoints go: a local folder or s3://bucket/prefix (through storage.endpoint_url).
    storage_uri: str = "${workdir}/ray_results"
    # Save a resumable checkpoint every N optimizer steps (and always at the end). 0 = only at the end.
    checkpoint_every: int = 200
    # Checkpoints kept: the best by val/loss when validation is on, else the latest; the latest is always kept.
    keep_checkpoints: int = 2
    # Validation micro-batches run at every checkpoint (on data.val_fraction of the records). 0 = none.
    val_batches: int = 20
    # How often Ray Train restarts the workers after one dies, each time from the latest checkpoint.
    max_failures: int = 0
    mixed_precision: MixedPrecision = MixedPrecision.auto
    # Threads torch may use in each worker; Ray sets OMP_NUM_THREADS=1 otherwise. 0 = the worker's CPUs.
    torch_threads: int = 0
    # Recompute the LLM's activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        require((self.max_steps is None) != (self.epochs is None), "train.max_steps",
                "set exactly one of train.max_steps and train.epochs (the other null)")
        require(self.max_steps is None or self.max_steps > 0, "train.max_steps", "must be > 0")
        require(self.epochs is None or self.epochs > 0, "train.epochs", "must be > 0")
        require(self.micro_batch_size > 0, "train.micro_batch_size", "must be > 0")
        require(self.global_batch_size is None or self.global_batch_size > 0, "train.global_batch_size",
                "must be > 0 or null")
        require(self.log_every > 0, "train.log_every", "must be > 0")
        require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        require(self.val_batches >= 0, "train.val_batches", "must be >= 0")
        require(self.max_failures >= -1, "train.max_failures", "must be >= 0 (or -1: retry forever)")
        require(self.torch_threads >= 0, "train.torch_threads", "must be >= 0")


@dataclass
class ScalingConfig:
    """How many Ray Train workers and what each gets. ``num_workers: 0`` runs the loop in the driver."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # ddp, or fsdp for strategy=full (each decoder / encoder layer one shard unit); ignored with one worker.
    sharding: Sharding = Sharding.ddp
    # Seconds a joined cluster may take to offer the workers' CPUs and GPUs (an autoscaler adding nodes; they
    # are requested from it) before the job fails naming what is missing. A local Ray the job started fails
    # at once: nothing will join it.
    resource_wait_s: float = 300.0
    # Times Ray Train may retry starting the worker group (each try waits up to 60 s for its placement)
    # before the run fails; Ray Train's own default retries for ever.
    max_start_failures: int = 2

    @property
    def workers(self) -> int:
        """Processes that train (local mode's driver counts as one)."""
        return max(1, self.num_workers)

    def __post_init__(self) -> None:
        require(self.num_workers >= 0, "scaling.num_workers", "must be >= 0")
        require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        require(self.resource_wait_s >= 0, "scaling.resource_wait_s", "must be >= 0")
        require(self.max_start_failures >= 0, "scaling.max_start_failures", "must be >= 0")
