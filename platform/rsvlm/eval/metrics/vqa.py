"""Accuracy of answers to visual questions: exact-match VQA, single choice and circular single choice.

Rows are plain mappings (one per question, e.g. a decoded JSONL line) so the functions stay free of I/O and
of any dataset class. Every function raises :class:`ValueError` on empty input rather than returning a
score of 0 or NaN, which would silently look like a real (terrible) result.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

from .answers import extract_choice, normalize_answer


def vqa_accuracy(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Exact-match accuracy of free-form answers, overall and per question type (RSVQA convention).

    Each row carries ``category`` (question type, e.g. ``presence``/``comparison``/``count``), ``answer``
    and ``ground_truth``; an answer is right when ``normalize_answer(answer) == normalize_answer(ground_truth)``.

    Returns ``{"OA", "AA", "per_type", "questions"}``: OA (overall accuracy) is correct / total over all
    questions; AA (average accuracy) is the unweighted mean of the per-type accuracies, as reported for
    RSVQA, so a rare question type weighs as much as a common one.
    """
    correct: dict[str, list[bool]] = defaultdict(list)
    for index, row in enumerate(rows):
        answer, truth = _text(row, "answer", index), _text(row, "ground_truth", index)
        correct[_text(row, "category", index)].append(normalize_answer(answer) == normalize_answer(truth))
    return _summary(correct, "vqa_accuracy")


def choice_accuracy(
    rows: Iterable[Mapping[str, Any]], options: str = "ABCDE", *, strict: bool = False
) -> dict[str, Any]:
    """Single-choice accuracy (FIT-RSRC style): the letter :func:`extract_choice` reads from ``answer``
    must equal the ``ground_truth`` letter. Same output shape as :func:`vqa_accuracy`; an answer naming no
    option is wrong. ``strict`` is passed to :func:`extract_choice` (default: the published rule).
    """
    correct: dict[str, list[bool]] = defaultdict(list)
    for index, row in enumerate(rows):
        chosen = extract_choice(_text(row, "answer", index), options, strict=strict)
        correct[_text(row, "category", index)].append(chosen == _text(row, "ground_truth", index).strip().upper())
    return _summary(correct, "choice_accuracy")


def circular_eval(
    rows: Iterable[Mapping[str, Any]], mode: str = "reference", options: str = "ABCDE"
) -> dict[str, Any]:
    """Circular single-choice accuracy (MMBench's CircularEval, FIT-RSRC).

    ``mode="reference"`` is the published rule: an answer is right when it equals the letter (ignoring
    case), else the first standalone capital A–E read by :func:`extract_choice` is taken, so "A ship is…"
    reads as A. ``mode="strict"`` does not read the article "A" as an option.

    Each question is asked several times with its options rotated; rows sharing ``question_id`` within a
    ``category`` are those rotations (ids are grouped per category because some benchmarks restart their
    ids in every category file). A question counts as right only when *every* rotation is answered right,
    which removes the credit a model gets from always picking the same letter.

    Returns ``{"overall": right questions / questions, "per_category": {category: accuracy},
    "questions": number of distinct questions}``.
    """
    if mode not in ("reference", "strict"):
        raise ValueError(f"mode must be 'reference' or 'strict', got {mode!r}")
    strict = mode == "strict"
    rotations: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for index, row in enumerate(rows):
        category = _text(row, "category", index)
        chosen = extract_choice(_text(row, "answer", index), options, strict=strict)
        rotations[(category, _text(row, "question_id", index))].append(
            chosen == _text(row, "ground_truth", index).strip().upper()
        )
    if not rotations:
        raise ValueError("circular_eval got no rows: nothing to score")
    per_category: dict[str, list[bool]] = defaultdict(list)
    for (category, _), answers in rotations.items():
        per_category[category].append(all(answers))
    right = sum(sum(flags) for flags in per_category.values())
    return {
        "overall": right / len(rotations),
        "per_category": {category: sum(flags) / len(flags) for category, flags in sorted(per_category.items())},
        "questions": len(rotations),
    }


def _summary(correct: Mapping[str, list[bool]], name: str) -> dict[str, Any]:
    if not correct:
        raise ValueError(f"{name} got no rows: nothing to score")
    per_type = {category: sum(flags) / len(flags) for category, flags in sorted(correct.items())}
    total = sum(len(flags) for flags in correct.values())
    return {
        "OA": sum(sum(flags) for flags in correct.values()) / total,
        "AA": sum(per_type.values()) / len(per_type),
        "per_type": per_type,
        "questions": total,
    }


def _text(row: Mapping[str, Any], key: str, index: int) -> str:
    # Ground truths and ids are often ints in the source JSON ("3", 17); a missing answer (None) is a
    # wrong answer, not a crash. A missing key is a malformed row and is reported with its position.
    if key not in row:
        raise ValueError(f"row {index} has no {key!r} field (fields: {sorted(row)})")
    value = row[key]
    return "" if value is None else str(value)
