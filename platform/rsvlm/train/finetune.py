"""The driver side of fine-tuning: data pipeline, MLflow run, Ray Train fit, checkpoint logged and registered.

A run is named (``train.run_name``). Beside Ray Train's checkpoints under ``train.storage_uri/<run name>/``
the driver keeps ``rsvlm_run.json``: the MLflow run it logs into and how often the run was started. Running
the same name again therefore resumes both: Ray Train from the latest checkpoint, MLflow in the same run.
"""

from __future__ import annotations

import math
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from safetensors.torch import save as save_safetensors

from rsvlm.config import to_dict
from rsvlm.config.job import JobConfig
from rsvlm.config.strategy import Routing, StrategyName
from rsvlm.data.ingest import training_dataset, validation_dataset
from rsvlm.data.prepare import verified_manifest
from rsvlm.data.samples import SampleBuilder
from rsvlm.data.storage import Storage, is_remote
from rsvlm.data.template import chat_template
from rsvlm.errors import JobError
from rsvlm.model.build import load_processor
from rsvlm.ray_session import ensure_ray
from rsvlm.strategies.checkpoint import INIT_WEIGHTS_FILE, init_weights
from rsvlm.tracking import flatten_config, resolve_model_uri
from rsvlm.tracking.logged_models import model_params, training_description
from rsvlm.tracking.runs import DESCRIPTION_TAG
from rsvlm.tracking.lifecycle import (
    RUN_RECORD,
    RunRecord,
    default_run_name,
    read_record,
    register_checkpoint,
    tracked_run,
    write_record,
)
from rsvlm.train import distributed, run_lock
from rsvlm.train.loop import train_loop_per_worker
from rsvlm.train.recipe import RecipeArgs


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


class RunFinishedError(JobError):
    """The named run already finished; starting it again would only register the same model twice."""


def total_training_steps(job: JobConfig, manifest: dict[str, Any]) -> int:
    """``train.max_steps``, or the steps ``train.epochs`` passes over the training records take."""
    if job.train.max_steps is not None:
        return job.train.max_steps
    # The validation hold-out is a hash split, so its size is the expected share, not an exact count.
    records = (sum(manifest["by_task"].get(task, 0) for task in job.data.tasks) if job.data.tasks
               else manifest["records"])
    training_records = records * (1.0 - job.data.val_fraction)
    return max(1, math.ceil(job.train.epochs * training_records / job.global_batch_size))


def check_tasks(job: JobConfig, manifest: dict[str, Any]) -> None:
    """Refuse ``data.tasks`` naming a task the prepared dataset has no record of (it would train on nothing)."""
    missing = sorted(set(job.data.tasks) - set(manifest["by_task"]))
    if missing:
        raise JobError(f"data.tasks={list(job.data.tasks)}", f"the prepared dataset {job.data.uri} has no record of "
                       f"task(s) {missing}", f"pick among {sorted(manifest['by_task'])}")


def data_seed(seed: int, start: int) -> int:
    """The shuffle seed of the ``start``-th start of a run: a restarted run draws a new permutation instead
    of re-reading the beginning of the one it already trained on (see ``rsvlm.train.state.DataPosition``)."""
    return seed if start == 0 else zlib.crc32(f"{seed}/{start}".encode())


def run_record_uri(job: JobConfig, storage: Storage, run_name: str) -> str:
    return storage.join(job.train.storage_uri, run_name, RUN_RECORD)


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
    check_tasks(job, manifest)
    processor, image_tokens = load_processor(job.model)
    started_ray = ensure_ray(job.ray_address)
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
    datasets = _datasets(job, manifest, processor, image_tokens, storage, record.starts)
    init_weights_uri = stage_init_weights(job, storage, run_name)
    total_steps = total_training_steps(job, manifest)
    untracked = ("Training goes on untracked: its metrics are not recorded and the model will not be registered; "
                 f"the checkpoints are under {job.train.storage_uri}")
    with tracked_run(job.tracking, run_name, record.mlflow_run_id, params=flatten_config(to_dict(job)),
                     tags={"rsvlm.job": "finetune", "rsvlm.run_name": run_name, **(tags or {}),
                           DESCRIPTION_TAG: training_description(job, manifest.get("fingerprint"))},
                     parent_run_id=parent_run_id, untracked=untracked) as run:
        record = RunRecord(run.run_id or record.mlflow_run_id, record.starts + 1)
        write_record(storage, record_uri, record)
        trainer = distributed.make_trainer(
            train_loop_per_worker,
            RecipeArgs(job, total_steps, run_name, run.run_id, validate="val" in datasets,
                       init_weights_uri=init_weights_uri).to_loop_config(),
            job, datasets, run_name, callbacks=callbacks)
        result = trainer.fit()
        checkpoint_uri = ("s3://" + result.checkpoint.path if is_remote(job.train.storage_uri)
                          else result.checkpoint.path)
        version = None
        if run.run_id and register:
            version = register_checkpoint(job.tracking, storage, job.registered_model_name, run.run_id,
                                          checkpoint_uri, model_params(job, manifest.get("fingerprint")))
    write_record(storage, record_uri, RunRecord(record.mlflow_run_id, record.starts, True, checkpoint_uri))
    return FinetuneResult(checkpoint_uri, dict(result.metrics or {}), run.run_id,
                          job.registered_model_name if version else None, version)


def _datasets(job: JobConfig, manifest: dict[str, Any], processor, image_tokens: int, storage: Storage,
              starts: int) -> dict[str, Any]:
    """The Ray datasets the trainer reads: ``train``, and ``val`` when validation runs."""
    data = job.data
    builder = SampleBuilder(processor, chat_template(job.model.chat_template), image_tokens, data.max_length,
                            manifest["image_root"], job.model.image_aspect, storage, data.fetch_threads)
    datasets = {"train": training_dataset(data.uri, manifest, builder, shuffle=data.shuffle,
                                          seed=data_seed(job.train.seed, starts), val_fraction=data.val_fraction,
                                          tasks=data.tasks)}
    if data.val_fraction > 0 and job.train.val_batches > 0:
        datasets["val"] = validation_dataset(data.uri, manifest, builder, val_fraction=data.val_fraction,
                                             tasks=data.tasks)
    return datasets


def stage_init_weights(job: JobConfig, storage: Storage, run_name: str) -> Optional[str]:
    """The stage-1 weights ``model.init_from`` names, copied once into the run's folder, where every worker
    (on any node) and every restart reads the same ones; None when the run starts from the base model.

    A restart finds the copy and does not resolve ``models:/…@alias`` again, so it cannot pick up another version.
    """
    if job.model.init_from is None:
        return None
    uri = storage.join(job.train.storage_uri, run_name, INIT_WEIGHTS_FILE)
    if storage.exists(uri):
        return uri
    source = job.model.init_from
    with tempfile.TemporaryDirectory(prefix="rsvlm-init-") as scratch:
        if is_remote(source):
            with storage.local_folder(source) as folder:
                tensors = init_weights(folder)
        else:
            tensors = init_weights(resolve_model_uri(source, job.tracking.uri, scratch).local_path)
    storage.write_bytes(uri, save_safetensors(tensors, metadata={"format": "pt", "init_from": source}))
    return uri
