"""The driver side of fine-tuning: data pipeline, MLflow run, Ray Train fit, checkpoint logged and registered."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rsvlm.config import to_dict
from rsvlm.config.schema import JobConfig, Routing, StrategyName
from rsvlm.data.ingest import training_dataset
from rsvlm.data.prepare import read_manifest
from rsvlm.data.samples import SampleBuilder
from rsvlm.data.storage import Storage
from rsvlm.data.template import VICUNA_V1
from rsvlm.model.build import load_processor
from rsvlm.tracking import create_run, finish_run, flatten_config, make_logger, register_model_version
from rsvlm.train import distributed
from rsvlm.train.loop import train_loop_per_worker

CHECKPOINT_ARTIFACT = "checkpoint"


@dataclass
class FinetuneResult:
    checkpoint_path: Path
    metrics: dict[str, float]
    run_id: Optional[str]
    registered_model: Optional[str]
    version: Optional[str]


def run_finetune(job: JobConfig) -> FinetuneResult:
    """Fine-tune ``job.model`` with ``job.strategy`` on ``job.data.uri``; register the result."""
    distributed.ensure_ray(job.ray_address)
    processor, image_tokens = load_processor(job.model)
    storage = Storage(job.storage)
    manifest = read_manifest(job.data.uri, storage)
    strategy = job.strategy
    if strategy.name is StrategyName.moe_lora and strategy.routing is Routing.task and not strategy.tasks:
        # Task routing has one gate per task, in this order; the checkpoint records it.
        strategy.tasks = sorted(manifest["by_task"])
    builder = SampleBuilder(processor, VICUNA_V1, image_tokens, job.data.max_length, manifest["image_root"],
                            job.model.image_aspect, storage, job.data.fetch_threads)
    dataset = training_dataset(job.data.uri, manifest, builder, shuffle=job.data.shuffle, seed=job.train.seed)

    run_name = job.train.run_name or f"{job.registered_model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = None
    if job.tracking.enabled:
        run_id = create_run(job.tracking, run_name, tags={"rsvlm.job": "finetune"})
        make_logger(job.tracking.uri, run_id, True).log_params(flatten_config(to_dict(job)))
    trainer = distributed.make_trainer(train_loop_per_worker, {"job": to_dict(job), "mlflow_run_id": run_id, "run_name": run_name},
                                       job, {"train": dataset}, run_name)
    try:
        result = trainer.fit()
    except BaseException:
        if run_id:
            finish_run(job.tracking.uri, run_id, "FAILED")
        raise
    checkpoint = Path(result.checkpoint.path)
    version = None
    if run_id:
        logger = make_logger(job.tracking.uri, run_id, True)
        logger.log_artifacts(str(checkpoint), CHECKPOINT_ARTIFACT)
        version = register_model_version(job.tracking.uri, job.registered_model_name, run_id, CHECKPOINT_ARTIFACT,
                                         alias=job.tracking.alias)
        finish_run(job.tracking.uri, run_id, "FINISHED")
    return FinetuneResult(checkpoint, dict(result.metrics or {}), run_id,
                          job.registered_model_name if version else None, version)
