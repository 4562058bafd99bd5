"""Benchmarks in the public question-file format: read questions, predict, score.

Questions JSONL: ``{question_id, image, text|question, category, ground_truth}``; predictions JSONL adds
``image_id`` and ``answer`` (the format the GeoChat / SkySenseGPT evaluation scripts read).

An existing answer file is never scored on its own: :func:`join_answers` joins it to the benchmark's own
questions file, and the score comes only from the benchmark's ground truth (see there for the join key).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from rsvlm.config.evaluation import BenchmarkConfig, BenchmarkKind
from rsvlm.data.boxes import BoxConvention
from rsvlm.errors import JobError
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


class BenchmarkFileError(JobError, ValueError):
    """A questions or answer file cannot be used: names the file and line, the problem and what to do."""


_ANSWER_FORMAT = "one JSON object a line: question_id, answer, and category where ids repeat across categories"


def _jsonl_rows(text: str, file_name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; bad JSON names the file and line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkFileError(f"{file_name}:{number}", f"invalid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise BenchmarkFileError(f"{file_name}:{number}", f"expected a JSON object, got {type(row).__name__}")
        yield number, row


def read_questions(text: str, file_name: str, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Question rows of a benchmark file's ``text``; ``text`` is filled from ``question`` where only that is given."""
    rows = []
    for number, row in _jsonl_rows(text, file_name):
        missing = [key for key in ("question_id", "category", "ground_truth") if key not in row]
        if missing or not ("text" in row or "question" in row):
            raise BenchmarkFileError(f"{file_name}:{number}", f"question row lacks {missing or ['text|question']}",
                                     "benchmark files have question_id, image, text|question, category, "
                                     "ground_truth")
        row.setdefault("text", row.get("question"))
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def read_answers(text: str, file_name: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of an answer file in the public format. Only ``question_id`` and ``answer`` are
    required; ``category`` and ``question``/``text`` help :func:`join_answers` find the benchmark row, and
    ``ground_truth`` is never used for scoring."""
    rows = []
    for number, row in _jsonl_rows(text, file_name):
        missing = [key for key in ("question_id", "answer") if key not in row]
        if missing:
            raise BenchmarkFileError(f"{file_name}:{number}", f"answer row lacks {missing}", _ANSWER_FORMAT)
        rows.append((number, row))
    if not rows:
        raise BenchmarkFileError(file_name, "no answers to score", _ANSWER_FORMAT)
    return rows


@dataclass
class JoinedAnswers:
    """An answer file joined to a benchmark's questions (:func:`join_answers`)."""

    # One row per scored question, in the benchmark's order: the benchmark's question_id, image, question,
    # category and ground_truth, with the file's answer ("" and ``"missing": true`` where it has none).
    rows: list[dict[str, Any]]
    # Scored questions the file does not answer; they are scored as wrong.
    missing: int
    # Answers to benchmark questions past ``benchmark.limit``: known, but not scored.
    beyond_limit: int
    # Answer rows whose own ``ground_truth`` differs from the benchmark's (it is ignored either way).
    ground_truth_differs: int


def join_answers(questions: Sequence[Mapping[str, Any]], answers: Sequence[tuple[int, Mapping[str, Any]]],
                 answers_name: str, questions_name: str, limit: Optional[int] = None) -> JoinedAnswers:
    """Join an answer file's ``(line, row)`` pairs to the benchmark's ``questions`` (all rows of its file).

    The join key is ``(category, question_id)``, compared as text (``3`` and ``"3"`` are one id); ``category``
    may be left out of an answer row when its id is in one category only. Ids are not unique by themselves:
    some benchmarks restart them in every category, and CircularEval benchmarks (FIT-RSRC, the synthetic
    split's relation questions) have one row per rotation of the options under one ``(category,
    question_id)``. Within such a group an answer goes to the rotation whose question text equals its
    ``question``/``text``, else to the group's first rotation not answered yet, so files that keep the
    benchmark's row order (every answer-writing script, ours included) join without the text.

    Refused, naming ``answers_name:line``: an id (or category) the benchmark does not have, and a second
    answer to the same row (more answers than the group has rows). Scored are the first ``limit`` benchmark
    rows (all when None), as a model evaluation would answer them; unanswered ones get the answer ``""``
    and count as wrong. Every field of the scored rows but ``answer`` comes from the benchmark: the answer
    file's ``ground_truth`` is ignored rather than checked, because the score must not depend on it and
    published files write it differently (ints for strings, one caption for a list); rows where it differs
    are only counted (``ground_truth_differs``), as a sign the file was made for another benchmark version.
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    categories: dict[str, list[str]] = defaultdict(list)
    for index, question in enumerate(questions):
        key = (str(question["category"]), str(question["question_id"]))
        if not groups[key]:
            categories[key[1]].append(key[0])
        groups[key].append(index)
    answered: dict[int, tuple[int, Any]] = {}  # benchmark row -> (answer file line, answer)
    differs = 0
    for line, row in answers:
        where = f"{answers_name}:{line}"
        question_id = str(row["question_id"])
        known = categories.get(question_id, [])
        if row.get("category") is not None:
            category = str(row["category"])
        elif len(known) == 1:
            category = known[0]
        elif known:
            raise BenchmarkFileError(where, f"question_id {question_id} is in several categories of the benchmark "
                                            f"({', '.join(known)})", "give the answer row its category")
        else:
            category = None
        group = groups.get((category, question_id)) if category is not None else None
        if group is None:
            why = f"question_id {question_id}" + (f" (category {category!r})" if category is not None else "")
            why += f" is not in the benchmark {questions_name}"
            if known:
                why += f"; there its category is {' or '.join(repr(c) for c in known)}"
            raise BenchmarkFileError(where, why, "score only answers to this benchmark's questions, or set "
                                                 "benchmark.questions to the questions file these answers are for")
        text = row.get("question", row.get("text"))
        candidates = [i for i in group if text is not None and questions[i]["text"] == text] or group
        free = [i for i in candidates if i not in answered]
        if not free:
            lines = ", ".join(str(answered[i][0]) for i in candidates)
            rotations = f"; the benchmark has {len(group)} rows (rotations) for it" if len(group) > 1 else ""
            raise BenchmarkFileError(where, f"question_id {question_id} (category {category!r}) is answered again "
                                            f"(already at line {lines}){rotations}",
                                     "keep one answer per benchmark question")
        index = free[0]
        answered[index] = (line, row["answer"])
        if "ground_truth" in row and not _same_truth(row["ground_truth"], questions[index]["ground_truth"]):
            differs += 1
    scored = list(questions[:limit] if limit is not None else questions)
    rows = prediction_rows(scored, ["" if index not in answered or answered[index][1] is None
                                    else answered[index][1] for index in range(len(scored))])
    for index, row in enumerate(rows):
        if index not in answered:
            row["missing"] = True
    return JoinedAnswers(rows, missing=len(scored) - sum(index < len(scored) for index in answered),
                         beyond_limit=sum(index >= len(scored) for index in answered), ground_truth_differs=differs)


def _same_truth(a: Any, b: Any) -> bool:
    return a == b or str(a).strip() == str(b).strip()


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
