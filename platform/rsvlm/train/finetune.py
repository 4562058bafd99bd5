"""The driver side of fine-tuning: data pipeline, MLflow run, Ray Train fit, checkpoint logged and registered.

A run is named (``train.run_name``). Beside Ray Train's checkpoints under ``train.storage_uri/<run name>/``
the driver keeps ``rsvlm_run.json``: the MLflow run it logs into and how often the run was started. Running
the same name again therefore resumes both: Ray Train from the latest checkpoint, MLflow in the same run.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from rsvlm.config import to_dict
from rsvlm.config.schema import JobConfig, Routing, StrategyName
from rsvlm.data.ingest import training_dataset, validation_dataset
from rsvlm.data.prepare import verified_manifest
from rsvlm.data.samples import SampleBuilder
from rsvlm.data.storage import Storage, is_remote
from rsvlm.data.template import VICUNA_V1
from rsvlm.errors import JobError
from rsvlm.model.build import load_processor
from rsvlm.tracking import (
    best_effort,
    finish_run,
    flatten_config,
    is_transient_tracking_error,
    make_logger,
    mask_url_credentials,
    open_run,
    register_model_version,
)
from rsvlm.train import distributed, run_lock
from rsvlm.train.loop import train_loop_per_worker

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
RUN_RECORD = "rsvlm_run.json"


@dataclass
class FinetuneResult:
    checkpoint_uri: str  # the final checkpoint: a local folder, or s3://… when train.storage_uri is on S3
    metrics: dict[str, Any]
    run_id: Optional[str]
    registered_model: Optional[str]
    version: Optional[str]

    @property
    def checkpoint_path(self) -> Path:
        """The final checkpoint's local folder (a run stored on S3 has none: use ``checkpoint_uri``)."""
        if is_remote(self.checkpoint_uri):
            raise ValueError(f"the checkpoint is in object storage: {self.checkpoint_uri}")
        return Path(self.checkpoint_uri)


@dataclass
class RunRecord:
    """What the driver keeps beside a run's checkpoints."""

    mlflow_run_id: Optional[str] = None
    starts: int = 0  # how many times the driver started this run
    finished: bool = False
    checkpoint_uri: Optional[str] = None  # the final checkpoint, once finished


class RunFinishedError(JobError):
    """The named run already finished; starting it again would only register the same model twice."""


def total_training_steps(job: JobConfig, manifest: dict[str, Any]) -> int:
    """``train.max_steps``, or the steps ``train.epochs`` passes over the training records take."""
    if job.train.max_steps is not None:
        return job.train.max_steps
    # The validation hold-out is a hash split, so its size is the expected share, not an exact count.
    training_records = manifest["records"] * (1.0 - job.data.val_fraction)
    return max(1, math.ceil(job.train.epochs * training_records / job.global_batch_size))


def data_seed(seed: int, start: int) -> int:
    """The shuffle seed of the ``start``-th start of a run: a restarted run draws a new permutation instead
    of re-reading the beginning of the one it already trained on (see ``rsvlm.train.state.DataPosition``)."""
    return seed if start == 0 else zlib.crc32(f"{seed}/{start}".encode())


def default_run_name(prefix: str) -> str:
    """``<prefix>-<time>-<random>``: unique even for runs started in the same second (a Hydra multirun)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_record_uri(job: JobConfig, storage: Storage, run_name: str) -> str:
    return storage.join(job.train.storage_uri, run_name, RUN_RECORD)


def read_record(storage: Storage, uri: str, record_type: type = RunRecord) -> Any:
    """The ``record_type`` (a dataclass) stored as JSON at ``uri``; an empty one when there is none yet."""
    if not storage.exists(uri):
        return record_type()
    try:
        return record_type(**json.loads(storage.read_text(uri)))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{uri}: not a {record_type.__name__} ({exc}); move it away to start afresh") from exc


def run_finetune(job: JobConfig, *, register: bool = True, parent_run_id: Optional[str] = None,
                 tags: Optional[Mapping[str, str]] = None, callbacks: Sequence[Any] = ()) -> FinetuneResult:
    """Fine-tune ``job.model`` with ``job.strategy`` on ``job.data.uri``; register the result.

    Resumes the run named ``train.run_name`` when it has checkpoints; refuses one that already finished.
    A sweep's trial passes ``register=False`` (only the best trial is registered), its parent run, its tags
    and Ray Train callbacks (``TuneReportCallback``). Another job running the same name at the same time is
    refused before anything starts (``rsvlm.train.run_lock``).
    """
    run_name = job.train.run_name or default_run_name(job.registered_model_name)
    lock_storage = Storage(job.storage)
    with run_lock.hold(lock_storage, lock_storage.join(job.train.storage_uri, run_name), "train.run_name", run_name):
        return _run_locked(job, run_name, register=register, parent_run_id=parent_run_id, tags=tags,
                           callbacks=callbacks)


def _run_locked(job: JobConfig, run_name: str, *, register: bool, parent_run_id: Optional[str],
                tags: Optional[Mapping[str, str]], callbacks: Sequence[Any]) -> FinetuneResult:
    """``run_finetune`` once the run's lock is held."""
    storage = Storage(job.storage)
    # Before Ray starts, so a missing or damaged dataset or a wrong model name is told in seconds: the
    # synthetic data is prepared when missing, other data must exist, and the shards are checked against the
    # manifest (data.verify; rsvlm.data.prepare.verify_prepared).
    manifest = verified_manifest(job.data, storage)
    processor, image_tokens = load_processor(job.model)
    started_ray = distributed.ensure_ray(job.ray_address)
    distributed.check_resources(job.scaling, 0 if started_ray else job.scaling.resource_wait_s)
    strategy = job.strategy
    if strategy.name is StrategyName.moe_lora and strategy.routing is Routing.task and not strategy.tasks:
        # Task routing has one gate per task, in this order; the checkpoint records it.
        strategy.tasks = sorted(manifest["by_task"])

    record_uri = run_record_uri(job, storage, run_name)
    record = read_record(storage, record_uri)
    if record.finished:
        raise RunFinishedError(f"train.run_name={run_name}", f"the run already finished ({record_uri})",
                               "choose a new train.run_name")

    builder = SampleBuilder(processor, VICUNA_V1, image_tokens, job.data.max_length, manifest["image_root"],
                            job.model.image_aspect, storage, job.data.fetch_threads)
    datasets = {"train": training_dataset(job.data.uri, manifest, builder, shuffle=job.data.shuffle,
                                          seed=data_seed(job.train.seed, record.starts),
                                          val_fraction=job.data.val_fraction)}
    if job.data.val_fraction > 0 and job.train.val_batches > 0:
        datasets["val"] = validation_dataset(job.data.uri, manifest, builder, val_fraction=job.data.val_fraction)

    run_id = _open_tracking_run(job, run_name, record.mlflow_run_id, parent_run_id, tags or {})
    record = RunRecord(run_id or record.mlflow_run_id, record.starts + 1)
    storage.write_text(record_uri, json.dumps(asdict(record)) + "\n")

    total_steps = total_training_steps(job, manifest)
    trainer = distributed.make_trainer(
        train_loop_per_worker,
        {"job": to_dict(job), "mlflow_run_id": run_id, "run_name": run_name, "total_steps": total_steps,
         "validate": "val" in datasets},
        job, datasets, run_name, callbacks=callbacks)
    try:
        result = trainer.fit()
    except BaseException:
        if run_id:
            best_effort(lambda: finish_run(job.tracking.uri, run_id, "FAILED"))
        raise
    checkpoint_uri = ("s3://" + result.checkpoint.path if is_remote(job.train.storage_uri)
                      else result.checkpoint.path)
    version = None
    if run_id:
        version = register_checkpoint(job, run_id, checkpoint_uri) if register else None
        best_effort(lambda: finish_run(job.tracking.uri, run_id, "FINISHED"))
    finished = RunRecord(record.mlflow_run_id, record.starts, True, checkpoint_uri)
    storage.write_text(record_uri, json.dumps(asdict(finished)) + "\n")
    return FinetuneResult(checkpoint_uri, dict(result.metrics or {}), run_id,
                          job.registered_model_name if version else None, version)


def _open_tracking_run(job: JobConfig, run_name: str, previous_run_id: Optional[str],
                       parent_run_id: Optional[str], tags: Mapping[str, str]) -> Optional[str]:
    """The MLflow run to log into: the previous start's (reopened), else a new one with the config as params.

    An unreachable tracking server does not stop training: the run trains untracked.
    """
    return open_run(job.tracking, run_name, previous_run_id, params=flatten_config(to_dict(job)),
                    tags={"rsvlm.job": "finetune", "rsvlm.run_name": run_name, **tags}, parent_run_id=parent_run_id,
                    untracked="Training goes on untracked: its metrics are not recorded and the model will not be "
                              f"registered; the checkpoints are under {job.train.storage_uri}")


def register_checkpoint(job: JobConfig, run_id: str, checkpoint_uri: str) -> Optional[str]:
    """Log a checkpoint to the run and register it at ``tracking.alias``; None if MLflow is down."""
    try:
        logger = make_logger(job.tracking.uri, run_id, True)
        with distributed.checkpoint_directory(checkpoint_uri, Storage(job.storage)) as directory:
            logger.log_artifacts(str(directory), CHECKPOINT_ARTIFACT)
        return register_model_version(job.tracking.uri, job.registered_model_name, run_id, CHECKPOINT_ARTIFACT,
                                      alias=job.tracking.alias)
    except Exception as exc:  # noqa: BLE001 - classified: caller errors are re-raised
        if not is_transient_tracking_error(exc):
            raise
        log.warning("MLflow tracking at %s failed while registering the model (%s: %s); the checkpoint is at %s.",
                    mask_url_credentials(job.tracking.uri), type(exc).__name__, mask_url_credentials(str(exc)),
                    checkpoint_uri)
        return None

