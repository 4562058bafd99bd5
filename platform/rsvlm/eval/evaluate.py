"""Evaluate a model (registered, a run's checkpoint, a folder, or the untrained base) on a benchmark, or score
an existing answer file against the benchmark's own questions and ground truth.

Only an evaluation of a registered model version writes scores on that version (the tags promotion reads);
an answer file's score is logged as its own run, tagged ``rsvlm.eval.source=answer_file``, and never reaches
the registry.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from mlflow.entities import Dataset

from rsvlm.config import to_dict
from rsvlm.config.job import JobConfig
from rsvlm.data.prepare import read_prepared_records
from rsvlm.data.images import open_rgb
from rsvlm.data.storage import Storage, join, resolve_inside
from rsvlm.eval.answering import BASE_MODEL, answer_questions
from rsvlm.eval.judge import JUDGE_CATEGORIES, judge_answers
from rsvlm.eval.report import write_report
from rsvlm.eval.benchmark import (join_answers, majority_answers, prediction_rows, read_answers, read_questions,
                                  score_predictions, write_jsonl)
from rsvlm.errors import JobError
from rsvlm.tracking import PinnedModel, flatten_config, pin_model_uri
from rsvlm.tracking.lifecycle import tracked_run
from rsvlm.tracking.logged_models import (benchmark_dataset, log_evaluation_inputs, log_model_metrics,
                                          untrained_model_id)
from rsvlm.tracking.promotion import (EVAL_SOURCE_TAG, SOURCE_ANSWER_FILE, SOURCE_MODEL, SOURCE_MODEL_VERSION,
                                      metric_key, set_model_version_tags)

__all__ = ["BASE_MODEL", "Evaluation", "evaluate_blind_baseline", "evaluate_model", "evaluate_predictions"]

_log = logging.getLogger(__name__)

# On an evaluation run: the training run of the model it scored.
TRAINING_RUN_TAG = "rsvlm.training_run_id"
# Where benchmark files are looked for (conf/benchmark/*.yaml): $RSVLM_BENCHMARKS, else <workdir>/benchmarks.
BENCHMARKS_ENV = "RSVLM_BENCHMARKS"


@dataclass
class Evaluation:
    label: str
    metrics: dict[str, float]
    predictions_path: Path
    metrics_path: Path
    run_id: Optional[str] = None
    model_name: Optional[str] = None
    model_version: Optional[str] = None
    model_id: Optional[str] = None  # the MLflow logged model the scores are logged on


def evaluate_model(job: JobConfig, model_uri: str, label: Optional[str] = None, *,
                   shuffle_images_seed: Optional[int] = None) -> Evaluation:
    """Answer every question of ``job.benchmark`` with greedy decoding, score, write files, log to MLflow.

    A ``models:/<name>@<alias>`` URI is pinned to the version the alias names now, so the answers, the
    scores and the tags written on the version all refer to one version.

    ``shuffle_images_seed`` makes the *shuffled-image control*: each question is asked about another
    question's image (a seeded permutation) and scored against its own ground truth. A model that reads the
    image falls to about the blind baseline there. The control never writes on a model version.
    """
    pinned = pin_model_uri(model_uri, job.tracking.uri) if model_uri.startswith("models:/") else PinnedModel(model_uri)
    model_uri, name, version = pinned.uri, pinned.name, pinned.version
    bench = job.benchmark
    text = _benchmark_text(job, Storage(job.storage))
    questions = read_questions(text, bench.questions, bench.limit)
    asked = questions if shuffle_images_seed is None else shuffled_images(questions, shuffle_images_seed)
    answers = answer_questions(job, model_uri, asked)
    label = label or (f"{name}-v{version}" if name else Path(model_uri).name or "model")
    evaluation = _record(job, label, prediction_rows(questions, answers))
    if shuffle_images_seed is None:  # the control is not an evaluation of the version
        evaluation.model_name, evaluation.model_version = name, version
    if job.tracking.enabled:
        dataset = benchmark_dataset(bench.name, bench.questions, text)
        evaluation.run_id = _log_evaluation(job, evaluation, pinned, dataset,
                                            control="shuffled_images" if shuffle_images_seed is not None else None)
    return evaluation


def shuffled_images(questions: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The questions with their images permuted among those that have one (a seeded permutation)."""
    with_image = [i for i, question in enumerate(questions) if question.get("image")]
    order = np.random.default_rng(seed).permutation(len(with_image))
    shuffled = [dict(question) for question in questions]
    for target, source in zip(with_image, order):
        shuffled[target]["image"] = questions[with_image[source]]["image"]
    return shuffled


def evaluate_predictions(job: JobConfig, label: Optional[str] = None) -> Evaluation:
    """Score the answer file ``benchmark.predictions`` (e.g. a published model's) without any model.

    The file is joined to the benchmark's questions file (:func:`rsvlm.eval.benchmark.join_answers`): unknown
    and repeated ids are refused with the file and line, the first ``benchmark.limit`` questions are scored,
    each with the benchmark's ground truth (the file's own ``ground_truth`` is ignored), and questions the
    file does not answer count as wrong; how many is the metric ``missing_answers``. The score is logged as
    an evaluation of the answer file, never on a model version, so it cannot move an alias.
    """
    bench = job.benchmark
    path = bench.predictions
    if not path:
        raise JobError("benchmark.predictions", "names no answer file to score", "predictions=PATH")
    storage = Storage(job.storage)
    text = _benchmark_text(job, storage)
    questions = read_questions(text, bench.questions)
    try:
        text = storage.read_text(path)
    except FileNotFoundError as exc:
        raise JobError(path, "answer file not found", "predictions= names the answer file to score") from exc
    joined = join_answers(questions, read_answers(text, path), path, bench.questions, bench.limit)
    if joined.missing:
        _log.warning("%s: %d of %d questions of %s have no answer and are scored as wrong (metric "
                     "missing_answers)", path, joined.missing, len(joined.rows), bench.questions)
    if joined.ground_truth_differs:
        _log.warning("%s: %d answer rows carry a ground_truth that differs from the benchmark's; it is ignored, "
                     "the benchmark's ground truth is scored", path, joined.ground_truth_differs)
    if joined.beyond_limit:
        _log.info("%s: %d answers are to questions past benchmark.limit=%s and are not scored", path,
                  joined.beyond_limit, bench.limit)
    evaluation = _record(job, label or Path(path).stem, joined.rows, {"missing_answers": float(joined.missing)})
    if job.tracking.enabled:
        evaluation.run_id = _log_evaluation(job, evaluation, PinnedModel(path),
                                            benchmark_dataset(bench.name, bench.questions, text), answer_file=True)
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
    return read_questions(_benchmark_text(job, storage), bench.questions, bench.limit)


def _benchmark_text(job: JobConfig, storage: Storage) -> str:
    """The benchmark's questions file; a missing one is a :class:`JobError` saying where it was looked for."""
    bench = job.benchmark
    try:
        return storage.read_text(bench.questions)
    except FileNotFoundError as exc:
        raise JobError(bench.questions, f"benchmark {bench.name}: questions file not found",
                       _where_benchmark_files_go(job, storage)) from exc


def _where_benchmark_files_go(job: JobConfig, storage: Storage) -> str:
    questions = job.benchmark.questions
    env = os.environ.get(BENCHMARKS_ENV, "").rstrip("/")
    default = join(job.workdir, "benchmarks")
    for root, described in ((env, f"${BENCHMARKS_ENV} ({env}"), (default, f"<workdir>/benchmarks ({default}")):
        if root and questions.startswith(root + "/"):
            state = "" if storage.exists(root) else ", which does not exist"
            unset = "" if root == env else f"${BENCHMARKS_ENV} is not set, so "
            return (f"{unset}benchmark files are read from {described}{state}): put "
                    f"{questions[len(root) + 1:]} there, point ${BENCHMARKS_ENV} at the folder that holds it, "
                    f"or set benchmark.questions=PATH")
    if job.benchmark.name == "synthetic":
        return f"python jobs/prepare_data.py data=synthetic workdir={job.workdir} writes it"
    return "set benchmark.questions to the benchmark's questions JSONL"


def _record(job: JobConfig, label: str, rows: list[dict[str, Any]],
            extra_metrics: Optional[dict[str, float]] = None) -> Evaluation:
    folder = Path(job.workdir) / "eval" / job.benchmark.name / label
    metrics = {**score_predictions(rows, job.benchmark), **(extra_metrics or {})}
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


def _log_evaluation(job: JobConfig, evaluation: Evaluation, model: PinnedModel, dataset: Dataset,
                    answer_file: bool = False, control: Optional[str] = None) -> str:
    # What was scored: a registered model version (the only source promotion accepts), another model (a
    # folder, a run's checkpoint, the base model, or a control run of any model) or an answer file.
    source = SOURCE_ANSWER_FILE if answer_file else SOURCE_MODEL_VERSION if evaluation.model_name else SOURCE_MODEL
    bench = job.benchmark
    tags = {"rsvlm.job": "evaluate", "rsvlm.benchmark": bench.name, "rsvlm.model_uri": model.uri,
            EVAL_SOURCE_TAG: source, **({"rsvlm.eval.control": control} if control else {})}
    if evaluation.model_name:
        tags.update({"rsvlm.model_name": evaluation.model_name, "rsvlm.model_version": evaluation.model_version})
    if model.run_id:
        tags[TRAINING_RUN_TAG] = model.run_id
    params = {"model_uri": model.uri, "model_name": model.name, "model_version": model.version,
              "model_id": model.model_id, "benchmark": to_dict(bench)}
    prefix = f"eval/{bench.name}"
    metrics = {metric_key(f"{prefix}/{key}"): value for key, value in evaluation.metrics.items()}
    with tracked_run(job.tracking, f"eval-{bench.name}-{evaluation.label}", params=flatten_config(params),
                     tags=tags) as run:
        if run.run_id:
            # Only the model itself carries the scores: a control run (shuffled images) is not its evaluation.
            evaluation.model_id = None if control else model.model_id or (
                untrained_model_id(job.tracking.uri, run.run_id, job) if model.uri == BASE_MODEL else None)
            log_evaluation_inputs(job.tracking.uri, run.run_id, dataset, evaluation.model_id)
            log_model_metrics(job.tracking.uri, run.run_id, metrics, evaluation.model_id, dataset)
        run.logger().log_artifacts(str(evaluation.predictions_path.parent), prefix)
    run_id = run.run_id
    if source == SOURCE_MODEL_VERSION:
        set_model_version_tags(job.tracking.uri, evaluation.model_name, evaluation.model_version,
                               {f"{prefix}/{key}": str(value) for key, value in evaluation.metrics.items()}
                               | {f"{prefix}/run_id": run_id})
    return run_id
