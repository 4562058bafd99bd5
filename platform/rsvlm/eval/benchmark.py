"""Benchmarks in the public question-file format: read questions, predict, score.

Questions JSONL: ``{question_id, image, text|question, category, ground_truth}``; predictions JSONL adds
``image_id`` and ``answer`` (the format the GeoChat / SkySenseGPT evaluation scripts read).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from rsvlm.data.boxes import BoxConvention, parse_boxes
from rsvlm.eval.metrics import choice_accuracy, circular_accuracy, grounding_accuracy, vqa_accuracy

VQA_TYPES = ("presence", "count", "comparison")
GROUNDING_TYPES = ("grounding",)
CHOICE_TYPES = ("relation",)


def read_questions(text: str, file_name: str, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Question rows of a benchmark file's ``text``; ``text`` is filled from ``question`` where only that is given."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file_name}:{number}: invalid JSON: {exc.msg}") from exc
        missing = [key for key in ("question_id", "category", "ground_truth") if key not in row]
        if missing or not ("text" in row or "question" in row):
            raise ValueError(f"{file_name}:{number}: question row lacks {missing or ['text|question']}")
        row.setdefault("text", row.get("question"))
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def prediction_rows(questions: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[dict[str, Any]]:
    """Public answer-file rows for ``questions`` answered by ``answers``."""
    return [{"question_id": q["question_id"], "image_id": q.get("image"), "question": q["text"],
             "answer": answer, "category": q["category"], "ground_truth": q["ground_truth"]}
            for q, answer in zip(questions, answers, strict=True)]


def score_predictions(rows: Sequence[Mapping[str, Any]], iou_threshold: float = 0.5) -> dict[str, float]:
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
        grounding = grounding_accuracy(
            [parse_boxes(str(r["answer"]), BoxConvention.geochat) for r in by_family["grounding"]],
            [parse_boxes(str(r["ground_truth"]), BoxConvention.geochat) for r in by_family["grounding"]],
            iou_threshold)
        metrics["grounding_accuracy"] = grounding["accuracy"]
    if by_family["relation"]:
        circular = circular_accuracy(by_family["relation"])
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
