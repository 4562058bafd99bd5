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
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from rsvlm.config import to_dict
from rsvlm.config.schema import JobConfig, Routing, StrategyName
from rsvlm.data.ingest import training_dataset, validation_dataset
from rsvlm.data.prepare import read_manifest
from rsvlm.data.samples import SampleBuilder
from rsvlm.data.storage import Storage, is_remote
from rsvlm.data.template import VICUNA_V1
from rsvlm.model.build import load_processor
from rsvlm.tracking import (
    create_run,
    finish_run,
    flatten_config,
    is_transient_tracking_error,
    make_logger,
    mask_url_credentials,
    register_model_version,
    reopen_run,
)
from rsvlm.train import distributed
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


class RunFinishedError(RuntimeError):
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


def run_finetune(job: JobConfig) -> FinetuneResult:
    """Fine-tune ``job.model`` with ``job.strategy`` on ``job.data.uri``; register the result.

    Resumes the run named ``train.run_name`` when it has checkpoints; refuses one that already finished.
    """
    distributed.ensure_ray(job.ray_address)
    processor, image_tokens = load_processor(job.model)
    storage = Storage(job.storage)
    manifest = read_manifest(job.data.uri, storage)
    strategy = job.strategy
    if strategy.name is StrategyName.moe_lora and strategy.routing is Routing.task and not strategy.tasks:
        # Task routing has one gate per task, in this order; the checkpoint records it.
        strategy.tasks = sorted(manifest["by_task"])

    run_name = job.train.run_name or f"{job.registered_model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    record_uri = storage.join(job.train.storage_uri, run_name, RUN_RECORD)
    record = _read_record(storage, record_uri)
    if record.finished:
        raise RunFinishedError(f"run {run_name!r} already finished ({record_uri}); choose a new train.run_name")

    builder = SampleBuilder(processor, VICUNA_V1, image_tokens, job.data.max_length, manifest["image_root"],
                            job.model.image_aspect, storage, job.data.fetch_threads)
    datasets = {"train": training_dataset(job.data.uri, manifest, builder, shuffle=job.data.shuffle,
                                          seed=data_seed(job.train.seed, record.starts),
                                          val_fraction=job.data.val_fraction)}
    if job.data.val_fraction > 0 and job.train.val_batches > 0:
        datasets["val"] = validation_dataset(job.data.uri, manifest, builder, val_fraction=job.data.val_fraction)

    run_id = _open_tracking_run(job, run_name, record.mlflow_run_id)
    record = RunRecord(run_id or record.mlflow_run_id, record.starts + 1)
    storage.write_text(record_uri, json.dumps(asdict(record)) + "\n")

    total_steps = total_training_steps(job, manifest)
    trainer = distributed.make_trainer(
        train_loop_per_worker,
        {"job": to_dict(job), "mlflow_run_id": run_id, "run_name": run_name, "total_steps": total_steps,
         "validate": "val" in datasets},
        job, datasets, run_name)
    try:
        result = trainer.fit()
    except BaseException:
        if run_id:
            _quietly(lambda: finish_run(job.tracking.uri, run_id, "FAILED"))
        raise
    checkpoint_uri = ("s3://" + result.checkpoint.path if is_remote(job.train.storage_uri)
                      else result.checkpoint.path)
    version = _register(job, run_id, result.checkpoint) if run_id else None
    storage.write_text(record_uri, json.dumps(asdict(RunRecord(record.mlflow_run_id, record.starts, True))) + "\n")
    return FinetuneResult(checkpoint_uri, dict(result.metrics or {}), run_id,
                          job.registered_model_name if version else None, version)


def _read_record(storage: Storage, uri: str) -> RunRecord:
    if not storage.exists(uri):
        return RunRecord()
    try:
        return RunRecord(**json.loads(storage.read_text(uri)))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{uri}: not a run record ({exc}); move it away to start this run afresh") from exc


def _open_tracking_run(job: JobConfig, run_name: str, previous_run_id: Optional[str]) -> Optional[str]:
    """The MLflow run to log into: the previous start's (reopened), else a new one with the config as params.

    An unreachable tracking server does not stop training: it is said once here, and the run trains
    untracked (its metrics are not recorded anywhere, and the model is not registered).
    """
    if not job.tracking.enabled:
        return None
    try:
        if previous_run_id:
            reopen_run(job.tracking.uri, previous_run_id)
            return previous_run_id
        run_id = create_run(job.tracking, run_name, tags={"rsvlm.job": "finetune", "rsvlm.run_name": run_name})
        make_logger(job.tracking.uri, run_id, True).log_params(flatten_config(to_dict(job)))
        return run_id
    except Exception as exc:  # noqa: BLE001 - classified: caller errors are re-raised
        if not is_transient_tracking_error(exc):
            raise
        log.warning("MLflow tracking at %s is unreachable (%s: %s). Training goes on untracked: its metrics are "
                    "not recorded and the model will not be registered; the checkpoints are under %s.",
                    mask_url_credentials(job.tracking.uri), type(exc).__name__, mask_url_credentials(str(exc)),
                    job.train.storage_uri)
        return None


def _register(job: JobConfig, run_id: str, checkpoint) -> Optional[str]:
    """Log the final checkpoint to the run and register it at ``tracking.alias``; None if MLflow is down."""
    try:
        logger = make_logger(job.tracking.uri, run_id, True)
        with checkpoint.as_directory() as directory:  # a local copy when the checkpoint is on S3
            logger.log_artifacts(directory, CHECKPOINT_ARTIFACT)
        version = register_model_version(job.tracking.uri, job.registered_model_name, run_id, CHECKPOINT_ARTIFACT,
                                         alias=job.tracking.alias)
        finish_run(job.tracking.uri, run_id, "FINISHED")
        return version
    except Exception as exc:  # noqa: BLE001 - classified: caller errors are re-raised
        if not is_transient_tracking_error(exc):
            raise
        log.warning("MLflow tracking at %s failed while registering the model (%s: %s); the checkpoint is at %s.",
                    mask_url_credentials(job.tracking.uri), type(exc).__name__, mask_url_credentials(str(exc)),
                    checkpoint.path)
        return None


def _quietly(action) -> None:
    """Run a best-effort tracking call whose failure must not hide the error being raised."""
    try:
        action()
    except Exception as exc:  # noqa: BLE001
        log.warning("could not update the MLflow run: %s", mask_url_credentials(str(exc)))
