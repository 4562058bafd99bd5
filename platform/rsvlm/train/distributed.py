"""Everything that knows about Ray Train, ranks and devices. No other module does.

The training loop asks this module for its context, its data shard, a device-ready model, and to report;
the driver asks it for a trainer. ``scaling.num_workers: 0`` runs the same loop in the driver process (Ray
Train's local mode), which is what unit tests use.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from rsvlm.config.schema import JobConfig, Sharding


def ensure_ray(address: Optional[str] = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, as set by ``ray job submit``), else start a local one."""
    if ray.is_initialized():
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=True,
             configure_logging=True, logging_level="WARNING")


def make_trainer(train_loop: Callable[[dict], None], loop_config: dict[str, Any], job: JobConfig,
                 datasets: dict[str, ray.data.Dataset], run_name: str) -> TorchTrainer:
    """A ``TorchTrainer`` for ``job.scaling`` whose checkpoints go under ``job.train.storage_uri/run_name``."""
    scaling = job.scaling
    return TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker} if scaling.num_workers else None,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=_absolute(job.train.storage_uri),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )


@dataclass(frozen=True)
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def worker_context(torch_threads: int = 0) -> WorkerContext:
    """This worker's rank, world size and device; sets torch's thread count.

    Ray sets ``OMP_NUM_THREADS`` to the whole CPUs it granted the worker (1 for a fraction), which can halve
    a CPU worker's speed on a small machine; ``torch_threads > 0`` overrides it (0 keeps Ray's choice).
    """
    context = ray.train.get_context()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    return WorkerContext(context.get_world_rank(), context.get_world_size(), device)


def prepare_model(model: nn.Module, sharding: Sharding = Sharding.ddp) -> nn.Module:
    """Move to this worker's device; with several workers wrap in DDP, or shard it with FSDP2.

    FSDP2 (``fully_shard``) makes every repeated block (each LLM decoder layer and vision encoder layer)
    one unit, then the rest: a unit's parameters are gathered just for its forward and backward, and
    gradients and AdamW states stay sharded. It runs over gloo on CPU workers (what the tests use) and
    over NCCL on GPUs, where it is meant to be used: on CPU it only saves memory, not time.
    """
    if ray.train.get_context().get_world_size() == 1:
        return model.to(worker_device())
    if sharding is Sharding.ddp:
        return ray.train.torch.prepare_model(model)
    from torch.distributed.fsdp import fully_shard

    model.to(worker_device())
    for block in _repeated_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def _repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of every ``nn.ModuleList`` that holds parameters (transformer layers), found structurally."""
    return [block for module in model.modules() if isinstance(module, nn.ModuleList)
            for block in module if any(True for _ in block.parameters())]


def full_state_dict(model: nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """The unsharded weights of an FSDP2 model, on CPU (every rank must call; rank 0 gets them), else None.

    None means the model is not sharded and saves itself as usual.
    """
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def worker_device() -> torch.device:
    return ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (what gets saved)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def dataset_shard(name: str = "train"):
    """This worker's share of the dataset passed to the trainer under ``name``."""
    shard = ray.train.get_dataset_shard(name)
    if shard is None:
        raise RuntimeError(f"the trainer was given no dataset named {name!r}")
    return shard


@contextmanager
def checkpoint_dir(job: JobConfig, run_name: str, name: str) -> Iterator[Path]:
    """A folder to write a checkpoint into before :func:`report` hands it to Ray Train.

    Workers write to scratch space and Ray Train copies it to ``storage_uri`` (which may be S3). Local mode
    reports the folder where it is, so there the checkpoint is written straight under ``storage_uri``.
    """
    if job.scaling.num_workers == 0:
        directory = Path(_absolute(job.train.storage_uri)) / run_name / name
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="rsvlm-ckpt-") as directory:
        yield Path(directory)


def report(metrics: dict[str, float], checkpoint: Optional[Path] = None) -> None:
    """Report metrics (and a checkpoint folder, from rank 0) to Ray Train. Every rank must call it."""
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())
