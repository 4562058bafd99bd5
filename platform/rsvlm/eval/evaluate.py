"""Evaluate a model (registered, a run's checkpoint, a folder, or the untrained base) on a benchmark."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rsvlm.config.schema import JobConfig
from rsvlm.data.images import open_rgb
from rsvlm.data.prepare import read_prepared_records
from rsvlm.data.storage import Storage, resolve_inside
from rsvlm.eval.benchmark import (majority_answers, prediction_rows, read_questions, score_predictions,
                                  write_jsonl)
from rsvlm.eval.generate import Prompt, generate_answers
from rsvlm.model.build import LoadedModel, load_model
from rsvlm.strategies.checkpoint import load_checkpoint
from rsvlm.tracking import create_run, finish_run, make_logger, resolve_model_uri
from rsvlm.tracking.promotion import set_model_version_tags

BASE_MODEL = "base"


@dataclass
class Evaluation:
    label: str
    metrics: dict[str, float]
    predictions_path: Path
    metrics_path: Path
    run_id: Optional[str] = None
    model_name: Optional[str] = None
    model_version: Optional[str] = None


def load_for_evaluation(job: JobConfig, model_uri: str) -> tuple[LoadedModel, Optional[str], Optional[str]]:
    """The model behind ``model_uri`` and, when it is registered, its name and version."""
    if model_uri == BASE_MODEL:
        return load_model(job.model), None, None
    with tempfile.TemporaryDirectory(prefix="rsvlm-model-") as scratch:
        resolved = resolve_model_uri(model_uri, job.tracking.uri, scratch)
        return load_checkpoint(resolved.local_path), resolved.name, resolved.version


def evaluate_model(job: JobConfig, model_uri: str, label: Optional[str] = None) -> Evaluation:
    """Answer every question of ``job.benchmark`` with greedy decoding, score, write files, log to MLflow."""
    loaded, name, version = load_for_evaluation(job, model_uri)
    bench, storage = job.benchmark, Storage(job.storage)
    questions = _benchmark_questions(job, storage)
    images: dict[str, Any] = {}
    prompts = []
    for question in questions:
        image = question.get("image")
        if image and image not in images:
            images[image] = open_rgb(storage.read_bytes(resolve_inside(bench.image_root, image)))
        prompts.append(Prompt(question["text"], images.get(image) if image else None))
    answers = generate_answers(loaded, prompts, batch_size=bench.batch_size, max_new_tokens=bench.max_new_tokens,
                               aspect=job.model.image_aspect)
    label = label or (f"{name}-v{version}" if name else Path(model_uri).name or "model")
    evaluation = _record(job, label, prediction_rows(questions, answers))
    evaluation.model_name, evaluation.model_version = name, version
    if job.tracking.enabled:
        evaluation.run_id = _log_evaluation(job, evaluation, model_uri)
    return evaluation


def evaluate_blind_baseline(job: JobConfig) -> Evaluation:
    """Score the most frequent training answer per question type, ignoring the image: what a model must beat
    to show it looks at the image at all."""
    storage = Storage(job.storage)
    majority = majority_answers(read_prepared_records(job.data.uri, storage))
    questions = _benchmark_questions(job, storage)
    answers = [majority.get(q["category"], "") for q in questions]
    return _record(job, "blind-baseline", prediction_rows(questions, answers))


def _benchmark_questions(job: JobConfig, storage: Storage) -> list[dict[str, Any]]:
    bench = job.benchmark
    return read_questions(storage.read_text(bench.questions), bench.questions, bench.limit)


def _record(job: JobConfig, label: str, rows: list[dict[str, Any]]) -> Evaluation:
    folder = Path(job.workdir) / "eval" / job.benchmark.name / label
    metrics = score_predictions(rows, job.benchmark.iou_threshold)
    predictions = write_jsonl(folder / "predictions.jsonl", rows)
    metrics_path = folder / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return Evaluation(label, metrics, predictions, metrics_path)


def _log_evaluation(job: JobConfig, evaluation: Evaluation, model_uri: str) -> str:
    tags = {"rsvlm.job": "evaluate", "rsvlm.benchmark": job.benchmark.name, "rsvlm.model_uri": model_uri}
    if evaluation.model_name:
        tags.update({"rsvlm.model_name": evaluation.model_name, "rsvlm.model_version": evaluation.model_version})
    run_id = create_run(job.tracking, f"eval-{job.benchmark.name}-{evaluation.label}", tags=tags)
    logger = make_logger(job.tracking.uri, run_id, True)
    prefix = f"eval/{job.benchmark.name}"
    logger.log_metrics({f"{prefix}/{key}": value for key, value in evaluation.metrics.items()}, 0)
    logger.log_artifacts(str(evaluation.predictions_path.parent), f"eval/{job.benchmark.name}")
    finish_run(job.tracking.uri, run_id, "FINISHED")
    if evaluation.model_name:
        set_model_version_tags(job.tracking.uri, evaluation.model_name, evaluation.model_version,
                               {f"{prefix}/{key}": str(value) for key, value in evaluation.metrics.items()}
                               | {f"{prefix}/run_id": run_id})
    return run_id
