"""Evaluate a model (registered, a run's checkpoint, a folder, or the untrained base) on a benchmark, or score
an existing answer file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rsvlm.config.schema import JobConfig
from rsvlm.data.prepare import read_prepared_records
from rsvlm.data.images import open_rgb
from rsvlm.data.storage import Storage, resolve_inside
from rsvlm.eval.answering import BASE_MODEL, answer_questions
from rsvlm.eval.judge import JUDGE_CATEGORIES, judge_answers
from rsvlm.eval.report import write_report
from rsvlm.eval.benchmark import (majority_answers, prediction_rows, read_answers, read_questions,
                                  score_predictions, write_jsonl)
from rsvlm.tracking import create_run, finish_run, make_logger, pin_model_uri
from rsvlm.tracking.promotion import set_model_version_tags

__all__ = ["BASE_MODEL", "Evaluation", "evaluate_blind_baseline", "evaluate_model", "evaluate_predictions"]

# MLflow metric names allow letters, digits, _ - . / and spaces; category names from data may hold more.
_METRIC_NAME_UNSAFE = re.compile(r"[^\w\-. /]")


@dataclass
class Evaluation:
    label: str
    metrics: dict[str, float]
    predictions_path: Path
    metrics_path: Path
    run_id: Optional[str] = None
    model_name: Optional[str] = None
    model_version: Optional[str] = None


def evaluate_model(job: JobConfig, model_uri: str, label: Optional[str] = None) -> Evaluation:
    """Answer every question of ``job.benchmark`` with greedy decoding, score, write files, log to MLflow.

    A ``models:/<name>@<alias>`` URI is pinned to the version the alias names now, so the answers, the
    scores and the tags written on the version all refer to one version.
    """
    name = version = None
    if model_uri.startswith("models:/"):
        model_uri, name, version = pin_model_uri(model_uri, job.tracking.uri)
    questions = _benchmark_questions(job, Storage(job.storage))
    answers = answer_questions(job, model_uri, questions)
    label = label or (f"{name}-v{version}" if name else Path(model_uri).name or "model")
    evaluation = _record(job, label, prediction_rows(questions, answers))
    evaluation.model_name, evaluation.model_version = name, version
    if job.tracking.enabled:
        evaluation.run_id = _log_evaluation(job, evaluation, model_uri)
    return evaluation


def evaluate_predictions(job: JobConfig, label: Optional[str] = None) -> Evaluation:
    """Score the answer file ``benchmark.predictions`` (e.g. a published model's) without any model."""
    path = job.benchmark.predictions
    if not path:
        raise ValueError("benchmark.predictions names no answer file to score")
    rows = read_answers(Storage(job.storage).read_text(path), path)
    evaluation = _record(job, label or Path(path).stem, rows)
    if job.tracking.enabled:
        evaluation.run_id = _log_evaluation(job, evaluation, path)
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
    metrics = score_predictions(rows, job.benchmark)
    open_ended = [row for row in rows if row["category"] in JUDGE_CATEGORIES]
    if job.benchmark.judge.url and open_ended:
        # The seeds' 1–10 judge scores; each judged row keeps its scores and review in the predictions file.
        judged = judge_answers(open_ended, job.benchmark.judge)
        metrics.update(judged["metrics"])
        for row, verdict in zip(open_ended, judged["rows"], strict=True):
            row.update({key: value for key, value in verdict.items() if key.startswith("judge_")})
    predictions = write_jsonl(folder / "predictions.jsonl", rows)
    metrics_path = folder / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    # In the folder _log_evaluation logs, so the MLflow UI shows it beside the predictions.
    bench, storage = job.benchmark, Storage(job.storage)
    write_report(folder, title=f"{bench.name} — {label}", metrics=metrics, rows=rows,
                 box_convention=bench.box_convention, iou_threshold=bench.iou_threshold,
                 load_image=lambda image: open_rgb(storage.read_bytes(resolve_inside(bench.image_root, image))))
    return Evaluation(label, metrics, predictions, metrics_path)


def _log_evaluation(job: JobConfig, evaluation: Evaluation, model_uri: str) -> str:
    tags = {"rsvlm.job": "evaluate", "rsvlm.benchmark": job.benchmark.name, "rsvlm.model_uri": model_uri}
    if evaluation.model_name:
        tags.update({"rsvlm.model_name": evaluation.model_name, "rsvlm.model_version": evaluation.model_version})
    run_id = create_run(job.tracking, f"eval-{job.benchmark.name}-{evaluation.label}", tags=tags)
    logger = make_logger(job.tracking.uri, run_id, True)
    prefix = f"eval/{job.benchmark.name}"
    logger.log_metrics({_METRIC_NAME_UNSAFE.sub("_", f"{prefix}/{key}"): value
                        for key, value in evaluation.metrics.items()}, 0)
    logger.log_artifacts(str(evaluation.predictions_path.parent), f"eval/{job.benchmark.name}")
    finish_run(job.tracking.uri, run_id, "FINISHED")
    if evaluation.model_name:
        set_model_version_tags(job.tracking.uri, evaluation.model_name, evaluation.model_version,
                               {f"{prefix}/{key}": str(value) for key, value in evaluation.metrics.items()}
                               | {f"{prefix}/run_id": run_id})
    return run_id
