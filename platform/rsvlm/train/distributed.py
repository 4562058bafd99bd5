"""Everything that knows about Ray Train, ranks and devices. No other module does.

The training loop asks this module for its context, its data shard, a device-ready model, and to report;
the driver asks it for a trainer. ``scaling.num_workers: 0`` runs the same loop in the driver process (Ray
Train's local mode), which is what unit tests use.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig
from ray.train import ScalingConfig as RayScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution import context as train_context
from torch import nn

from rsvlm.config.job import JobConfig
from rsvlm.config.training import ScalingConfig, Sharding
from rsvlm.data.storage import Storage, local_path
from rsvlm.errors import DEBUG_ENV, JobError

log = logging.getLogger(__name__)

# The metric Ray Train ranks checkpoints by when validation runs (lower is better).
VALIDATION_METRIC = "val/loss"


def worker_resources(scaling: ScalingConfig) -> dict[str, float]:
    """What one training worker of ``scaling`` takes from a node."""
    resources = {"CPU": float(scaling.cpus_per_worker)}
    if scaling.use_gpu:
        resources["GPU"] = 1.0
    return resources


def check_resources(scaling: ScalingConfig, wait_s: float, poll_s: float = 5.0) -> None:
    """Fail in seconds, naming what is missing, when the cluster cannot place ``scaling``'s workers.

    Left to itself, Ray Train waits for the resources for ever (``scaling=gpu1`` on a machine without GPUs
    hangs). Each worker must fit on one node. A cluster that may grow (an autoscaler) is asked for the
    workers' bundles and given ``wait_s`` seconds; ``wait_s=0`` judges at once.
    """
    if scaling.num_workers == 0:
        return
    bundle = worker_resources(scaling)
    deadline = time.monotonic() + wait_s
    asked = False
    while True:
        room = _workers_that_fit(bundle)
        if room >= scaling.num_workers:
            return
        if time.monotonic() >= deadline:
            offered = {key: value for key, value in ray.cluster_resources().items() if key in ("CPU", "GPU")}
            wanted = ", ".join(f"{value:g} {key}" for key, value in bundle.items())
            raise JobError(
                f"scaling.num_workers={scaling.num_workers}",
                f"each worker needs {wanted} on one node, and the cluster has room for {room} "
                f"(it offers {', '.join(f'{v:g} {k}' for k, v in sorted(offered.items())) or 'nothing'}"
                + (f" after waiting {wait_s:g} s)" if wait_s else ")"),
                "choose a scaling preset this cluster can hold (scaling=cpu1 on a machine without GPUs) or join "
                "a cluster that has the resources (ray_address=…)")
        if not asked:
            from ray.autoscaler.sdk import request_resources

            # An autoscaler (KubeRay's) adds nodes for requested bundles; without one this does nothing.
            request_resources(bundles=[bundle] * scaling.num_workers)
            log.warning("waiting up to %g s for the cluster to offer %d worker(s) of %s", wait_s,
                        scaling.num_workers, bundle)
            asked = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _workers_that_fit(bundle: dict[str, float]) -> int:
    room = 0
    for node in ray.nodes():
        if node.get("Alive"):
            offered = node.get("Resources", {})
            room += int(min(offered.get(key, 0.0) // need for key, need in bundle.items()))
    return room


def make_trainer(train_loop: Callable[[dict], None], loop_config: dict[str, Any], job: JobConfig,
                 datasets: dict[str, ray.data.Dataset], run_name: str, callbacks: Sequence[Any] = ()) -> TorchTrainer:
    """A ``TorchTrainer`` for ``job.scaling`` whose checkpoints go under ``job.train.storage_uri/run_name``.

    Ray Train restores from the latest checkpoint there when the same ``run_name`` runs again, and restarts
    the workers from it up to ``train.max_failures`` times when one dies. Only ``train`` is split across
    workers; ``val`` reaches every worker whole, so each computes the same validation loss. ``callbacks`` are
    Ray Train callbacks (a sweep's trial passes ``TuneReportCallback``).
    """
    scaling = job.scaling
    keep_best = "val" in datasets
    filesystem, storage_path = Storage(job.storage).filesystem(job.train.storage_uri)
    return TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config=loop_config,
        scaling_config=RayScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker} if scaling.num_workers else None,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=job.train.keep_checkpoints,
                checkpoint_score_attribute=VALIDATION_METRIC if keep_best else None,
                checkpoint_score_order="min",
            ),
            # Scheduling failures (the worker group cannot start) are the controller's, retried for ever by
            # default: bounded here, after check_resources has judged the cluster.
            failure_config=FailureConfig(max_failures=job.train.max_failures,
                                         controller_failure_limit=scaling.max_start_failures),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options={name: _ingest_options(ds) for name, ds in datasets.items()}),
    )


def _ingest_options(dataset: ray.data.Dataset) -> ray.data.ExecutionOptions:
    """The execution options ``dataset`` was built with (validation's preserve_order), for Ray Train's ingest.

    Without them Ray Train applies its defaults, which drop the dataset's own options and set the deprecated
    ``exclude_resources`` (a RayDeprecationWarning in every run); that option is left out here.
    """
    options = dataset.context.execution_options
    return ray.data.ExecutionOptions(resource_limits=options.resource_limits, preserve_order=options.preserve_order,
                                     verbose_progress=options.verbose_progress, label_selector=options.label_selector)


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
    # Ray Train logs every report with all its metrics ("Reporting training result …", from a logger named by
    # its file's path, not under ray.train), and Ray Data every execution plan, at INFO: in a day-long run's
    # `ray job logs` they bury the progress lines, which say the same things once. RSVLM_DEBUG=1 keeps them.
    if not os.environ.get(DEBUG_ENV):
        for name in ("ray.train", "ray.data", train_context.__file__):
            logging.getLogger(name).setLevel(logging.WARNING)
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
    if not is_sharded(model):
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
def checkpoint_staging_dir(job: JobConfig, run_name: str, name: str) -> Iterator[Path]:
    """A folder to write a checkpoint into before :func:`report` hands it to Ray Train.

    Workers write to scratch space and Ray Train copies it to ``storage_uri`` (which may be S3). Local mode
    reports the folder where it is, so there the checkpoint is written straight under ``storage_uri``.
    """
    if job.scaling.num_workers == 0:
        directory = local_path(job.train.storage_uri).expanduser().resolve() / run_name / name
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="rsvlm-ckpt-") as directory:
        yield Path(directory)


@contextmanager
def resume_checkpoint_dir() -> Iterator[Optional[Path]]:
    """The folder of the checkpoint this run resumes from (a restarted or re-run run), else None.

    Local mode has none: Ray Train resumes only runs that have workers.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield Path(directory)


def report(metrics: dict[str, float], checkpoint: Optional[Path] = None, name: Optional[str] = None) -> None:
    """Report metrics (and a checkpoint folder, from rank 0, stored as ``name``) to Ray Train.

    Every rank must call it: it is a barrier.
    """
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None,
                     checkpoint_dir_name=name if checkpoint else None)


# -- collectives that also work with one process (no process group) ------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_workers(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over every worker (each worker passes its own)."""
    if not _distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every worker, in rank order (picklable objects)."""
    if not _distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo takes CPU ones.
    return worker_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def gradient_sync(model: nn.Module, enabled: bool) -> ContextManager:
    """Within it, backward passes accumulate gradients locally instead of averaging them over workers.

    Gradient accumulation syncs once per optimizer step, on the last micro-batch, not on every one.
    """
    if enabled:
        return nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        return _fsdp_no_sync(model)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def is_sharded(model: nn.Module) -> bool:
    """True for a model whose parameters FSDP2 sharded over the workers."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state keyed by parameter name, on CPU (a collective under FSDP; rank 0 gets it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state saved by :func:`optimizer_state`; under FSDP each worker keeps its shard of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=is_sharded(model)))
