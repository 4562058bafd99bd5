"""Benchmarks in the public question-file format: read questions, predict, score.

Questions JSONL: ``{question_id, image, text|question, category, ground_truth}``; predictions JSONL adds
``image_id`` and ``answer`` (the format the GeoChat / SkySenseGPT evaluation scripts read).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from rsvlm.config.schema import BenchmarkConfig, BenchmarkKind
from rsvlm.data.boxes import BoxConvention, parse_boxes
from rsvlm.eval.metrics import (
    caption_scores,
    choice_accuracy,
    circular_eval,
    complex_comprehension_metrics,
    fitrsfg_vqa_accuracy,
    grounding_accuracy,
    scene_classification_metrics,
    vqa_accuracy,
)

VQA_TYPES = ("presence", "count", "comparison")
GROUNDING_TYPES = ("grounding",)
CHOICE_TYPES = ("relation",)


def _jsonl_rows(text: str, file_name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; bad JSON names the file and line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file_name}:{number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{file_name}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def read_questions(text: str, file_name: str, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Question rows of a benchmark file's ``text``; ``text`` is filled from ``question`` where only that is given."""
    rows = []
    for number, row in _jsonl_rows(text, file_name):
        missing = [key for key in ("question_id", "category", "ground_truth") if key not in row]
        if missing or not ("text" in row or "question" in row):
            raise ValueError(f"{file_name}:{number}: question row lacks {missing or ['text|question']}")
        row.setdefault("text", row.get("question"))
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def read_answers(text: str, file_name: str) -> list[dict[str, Any]]:
    """Rows of an answer file in the public format (``question_id, answer, category, ground_truth``, and
    ``question``/``text`` where the metric reads it)."""
    rows = []
    for number, row in _jsonl_rows(text, file_name):
        missing = [key for key in ("question_id", "answer", "category", "ground_truth") if key not in row]
        if missing:
            raise ValueError(f"{file_name}:{number}: answer row lacks {missing}")
        row.setdefault("question", row.get("text"))
        rows.append(row)
    if not rows:
        raise ValueError(f"{file_name}: no answers to score")
    return rows


def prediction_rows(questions: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[dict[str, Any]]:
    """Public answer-file rows for ``questions`` answered by ``answers``."""
    return [{"question_id": q["question_id"], "image_id": q.get("image"), "question": q["text"],
             "answer": answer, "category": q["category"], "ground_truth": q["ground_truth"]}
            for q, answer in zip(questions, answers, strict=True)]


def score_predictions(rows: Sequence[Mapping[str, Any]], bench: BenchmarkConfig) -> dict[str, float]:
    """Flat metrics (``name → number``, nested results joined with ``/``) for ``bench.kind``.

    - ``mixed``: by each row's category, see :func:`score_mixed`.
    - ``vqa``: ``OA``, ``AA`` and ``<type>_accuracy`` (``mode=reference``: FIT-RSFG's lower-case exact match;
      ``strict``: :func:`rsvlm.eval.metrics.normalize_answer` on both sides).
    - ``captions``: COCO caption scores; ``ground_truth`` is one reference or a list of them.
    - ``grounding``: accuracy at ``iou_threshold`` (≥) with boxes in ``box_convention``.
    - ``circular``: FIT-RSRC CircularEval, ``overall`` and per category (``strict`` does not read the article
      "A" as an option).
    - ``scene_classification``, ``complex_comprehension``: the FIT-RSFG metrics in ``mode``.
    """
    mode = bench.mode.value
    kind = bench.kind
    if kind is BenchmarkKind.mixed:
        return score_mixed(rows, bench.iou_threshold)
    if kind is BenchmarkKind.vqa:
        result = fitrsfg_vqa_accuracy(rows, mode=mode)
        return {"OA": result["OA"], "AA": result["AA"],
                **{f"{category}_accuracy": value for category, value in result["per_type"].items()}}
    if kind is BenchmarkKind.captions:
        refs = {str(r["question_id"]): _references(r["ground_truth"]) for r in rows}
        return caption_scores(refs, {str(r["question_id"]): str(r["answer"] or "") for r in rows})
    if kind is BenchmarkKind.grounding:
        result = grounding_accuracy(rows, bench.box_convention, bench.iou_threshold)
        return {"accuracy": result["accuracy"], "mean_best_iou": result["mean_best_iou"]}
    if kind is BenchmarkKind.circular:
        result = circular_eval(rows, bench.mode.value)
        return {"overall": result["overall"], **{f"{c}_accuracy": v for c, v in result["per_category"].items()}}
    if kind is BenchmarkKind.scene_classification:
        return flatten_metrics(scene_classification_metrics(rows, mode=mode))
    return flatten_metrics(complex_comprehension_metrics(rows, mode=mode))


def flatten_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested metric result as ``a/b/c → value``; text (e.g. why a metric is undefined)
    and counts of nothing are left out."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _references(ground_truth: Any) -> list[str]:
    return [str(text) for text in ground_truth] if isinstance(ground_truth, list) else [str(ground_truth)]


def score_mixed(rows: Sequence[Mapping[str, Any]], iou_threshold: float = 0.5) -> dict[str, float]:
    """Flat metrics for prediction rows, by question family present.

    ``vqa_accuracy`` is the overall accuracy (OA) over presence / count / comparison; ``vqa_aa`` the mean of
    per-type accuracies; ``grounding_accuracy`` uses GeoChat boxes in image fractions (square tiles, so the
    same IoU as in pixels); ``relation_accuracy`` is per-row single choice and ``relation_circular_accuracy``
    needs every rotation of a question right.
    """
    by_family: dict[str, list] = defaultdict(list)
    for row in rows:
        category = row["category"]
        family = ("vqa" if category in VQA_TYPES else "grounding" if category in GROUNDING_TYPES
                  else "relation" if category in CHOICE_TYPES else None)
        if family:
            by_family[family].append(row)
    metrics: dict[str, float] = {}
    if by_family["vqa"]:
        vqa = vqa_accuracy(by_family["vqa"])
        metrics["vqa_accuracy"], metrics["vqa_aa"] = vqa["OA"], vqa["AA"]
        metrics.update({f"vqa_{kind}_accuracy": value for kind, value in vqa["per_type"].items()})
    if by_family["grounding"]:
        grounding = grounding_accuracy(by_family["grounding"], BoxConvention.geochat, iou_threshold)
        metrics["grounding_accuracy"] = grounding["accuracy"]
    if by_family["relation"]:
        circular = circular_eval(by_family["relation"])
        metrics["relation_circular_accuracy"] = circular["overall"]
        metrics["relation_accuracy"] = choice_accuracy(by_family["relation"])["OA"]
    return metrics


def majority_answers(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The most frequent answer per task among single-turn training records: the blind (no image) baseline."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        turns = record["conversations"]
        if len(turns) == 2:
            counts[record.get("task", "")][turns[1]["value"]] += 1
    return {task: counter.most_common(1)[0][0] for task, counter in counts.items()}


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSONL via a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    partial.replace(path)
    return path
