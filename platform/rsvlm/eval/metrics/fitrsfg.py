"""FIT-RSFG benchmark metrics (SkySenseGPT): scene classification, VQA and complex comprehension task1–task6.

Every function takes ``mode="reference"`` (reproduces the published evaluation, faults included, so numbers
are comparable with the paper's) or ``mode="strict"`` (the faults fixed); report which mode produced a number.
Rows are plain mappings, one per answered question, as in the published answer files:
``{question_id, category, answer, ground_truth}`` (scene classification also needs ``question`` or ``text``).
Empty input raises ``ValueError``; a missing or malformed answer is a wrong answer, never a crash.

Published sources: Luo-Z13/SkySenseGPT ``Eval_scripts/batch_geochat_sceneclassification.py`` and
``batch_geochat_vqa.py`` (their ``evaluation_metrics``), and om-ai-lab/ImageRAG
``codebase/inference/FIT_Eval/eval_complex_comprehension.py`` for task1–task6. Parsing lives in
:mod:`.fitrsfg_parse`, box AP in :mod:`.detection`, scene-graph recall in :mod:`.scene_graph`; the functions
here only route rows to them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from .answers import normalize_answer
from .detection import rotated_map
from .fitrsfg_parse import (
    Detection,
    Mode,
    RelationTriple,
    SceneGraph,
    check_mode,
    is_categorised,
    parse_detection,
    parse_image_scene_graph,
    parse_object_reasoning,
    parse_region_scene_graph,
    parse_relation_tokens,
    parse_relation_triple,
)
from .scene_graph import scene_graph_recall

# Shared with vqa.py on purpose (same row checks and OA/AA summary), not duplicated.
from .vqa import _summary, _text, vqa_accuracy

SINGLE_LABEL_SUFFIX = "Answer in one word or a short phrase."
MULTI_LABEL_SUFFIX = "Answer with all applicable classes separated by commas."
COMPLEX_TASKS = ("task1", "task2", "task3", "task4", "task5", "task6")
_BRACES = re.compile(r"\{(.+?)\}")


# ------------------------------------------------------------------------------------- scene classification


def scene_classification_metrics(rows: Iterable[Mapping[str, Any]], *, mode: Mode = "reference") -> dict[str, Any]:
    """Single-label accuracy and multi-label micro precision / recall / F1 (FIT-RSFG image classification).

    The kind of a row comes from the end of its question (``question`` or ``text``): ``SINGLE_LABEL_SUFFIX``
    → exact match, case-insensitive; ``MULTI_LABEL_SUFFIX`` → the answer and the ground truth are split on
    commas into label sets, and true / false positives and false negatives are summed over all questions
    (micro averaging) before P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R), each 0 when its
    denominator is 0.

    Reference: labels compared after ``lower()`` (plus ``strip()`` per multi label) only, so "Airport." is
    wrong for "airport"; a question with neither suffix takes the kind of the row before it (the published
    loop reuses its variable) and raises ``ValueError`` on the first row (the published code crashes there).
    Strict: both sides go through :func:`.answers.normalize_answer` (also per label; empty labels dropped),
    and a question with neither suffix raises ``ValueError`` naming the row.

    Returns ``{"single_label": {"accuracy", "correct", "questions"} | None, "multi_label": {"precision",
    "recall", "f1", "tp", "fp", "fn", "questions"} | None}`` (``None`` when no row is of that kind).
    """
    check_mode(mode)
    kind = None
    correct = single = multi = 0
    tp = fp = fn = 0
    count = 0
    for index, row in enumerate(rows):
        count += 1
        question = _question(row, index)
        if mode == "strict":
            question = question.strip()
        if question.endswith(SINGLE_LABEL_SUFFIX):
            kind = "single"
        elif question.endswith(MULTI_LABEL_SUFFIX):
            kind = "multi"
        elif mode == "strict" or kind is None:
            raise ValueError(
                f"row {index} (question_id {row.get('question_id')!r}): the question ends with neither "
                f"{SINGLE_LABEL_SUFFIX!r} nor {MULTI_LABEL_SUFFIX!r}, so it is neither single- nor multi-label"
            )
        answer, truth = _text(row, "answer", index), _text(row, "ground_truth", index)
        if kind == "single":
            single += 1
            if mode == "reference":
                correct += truth.lower() == answer.lower()
            else:
                correct += normalize_answer(truth) == normalize_answer(answer)
        else:
            multi += 1
            truths, answers = _label_set(truth, mode), _label_set(answer, mode)
            tp += len(truths & answers)
            fp += len(answers - truths)
            fn += len(truths - answers)
    if count == 0:
        raise ValueError("scene_classification_metrics got no rows: nothing to score")
    return {
        "single_label": {"accuracy": correct / single, "correct": correct, "questions": single} if single else None,
        "multi_label": {**_prf(tp, fp, fn), "questions": multi} if multi else None,
    }


def _question(row: Mapping[str, Any], index: int) -> str:
    for key in ("question", "text"):
        if row.get(key) is not None:
            return str(row[key])
    raise ValueError(f"row {index} has no 'question' or 'text' field (fields: {sorted(row)})")


def _label_set(text: str, mode: Mode) -> set[str]:
    if mode == "reference":
        return {label.strip() for label in text.lower().split(",")}
    return {label for label in (normalize_answer(part) for part in text.split(",")) if label}


# ------------------------------------------------------------------------------------------------------ VQA


def fitrsfg_vqa_accuracy(rows: Iterable[Mapping[str, Any]], *, mode: Mode = "reference") -> dict[str, Any]:
    """Exact-match VQA accuracy, overall (``OA``) and per category (``per_type``), as in :func:`.vqa.vqa_accuracy`.

    Reference: right when ``answer.lower() == ground_truth.lower()`` (no stripping: "Yes." is wrong for "yes"),
    categories lower-cased. Strict: :func:`.vqa.vqa_accuracy` itself (both sides through
    :func:`.answers.normalize_answer`). ``AA`` (mean of per-category accuracies) is extra; the published script
    reports OA and the per-category table. (The published script looks categories up lower-cased in a table
    keyed by the original names, so it fails with a KeyError on a capitalised category; grouping by the
    lower-cased name is what it evidently means.)
    """
    check_mode(mode)
    if mode == "strict":
        return vqa_accuracy(rows)
    correct: dict[str, list[bool]] = defaultdict(list)
    for index, row in enumerate(rows):
        answer, truth = _text(row, "answer", index), _text(row, "ground_truth", index)
        correct[_text(row, "category", index).lower()].append(answer.lower() == truth.lower())
    return _summary(correct, "fitrsfg_vqa_accuracy")


# -------------------------------------------------------------------------------- task 2 and 3: relations


def relation_prf(
    gt: Sequence[Iterable[str]], pred: Sequence[Iterable[str]], *, mode: Mode = "reference"
) -> dict[str, Any]:
    """Micro precision / recall / F1 of relation sets (task 2); ``gt[i]`` and ``pred[i]`` belong to one question.

    Per question the relations are sets (a repeated relation counts once); TP = |gt ∩ pred|, FP = |pred − gt|,
    FN = |gt − pred| are summed over questions, then P, R, F1 as in :func:`scene_classification_metrics`.
    Names are compared exactly as written. ``mode`` is accepted for a uniform interface but changes nothing:
    no fault is known in the published task-2 scoring.
    """
    check_mode(mode)
    if len(gt) != len(pred):
        raise ValueError(f"relation_prf needs one prediction per question: got {len(pred)} and {len(gt)}")
    if not gt:
        raise ValueError("relation_prf got no questions: nothing to score")
    tp = fp = fn = 0
    for truth, answer in zip(gt, pred):
        truths, answers = set(truth), set(answer)
        tp += len(truths & answers)
        fp += len(answers - truths)
        fn += len(truths - answers)
    return {**_prf(tp, fp, fn), "questions": len(gt)}


def relation_reasoning_prf(
    gt: Sequence[RelationTriple | None], pred: Sequence[RelationTriple | None], *, mode: Mode = "reference"
) -> dict[str, Any]:
    """Task 3: micro P / R / F1 of the relations named between a subject and an object.

    A question whose ground truth is ``None`` (no subject, object or relation: a negative sample) is skipped in
    both modes. When the answer names the same subject and object, its relation set is scored as in
    :func:`relation_prf`. Otherwise (other classes, or no parsable answer) reference drops the question — it
    counts nowhere, which flatters a model that names the wrong objects — while strict counts all its
    ground-truth relations as false negatives and the predicted ones as false positives. Strict also compares
    class names case- and surrounding-space-insensitively. ``questions`` counts the questions that entered P/R.
    """
    check_mode(mode)
    if len(gt) != len(pred):
        raise ValueError(f"relation_reasoning_prf needs one prediction per question: got {len(pred)} and {len(gt)}")
    if not gt:
        raise ValueError("relation_reasoning_prf got no questions: nothing to score")
    tp = fp = fn = used = 0
    for truth, answer in zip(gt, pred):
        if truth is None:
            continue
        truths = set(truth.relations)
        if answer is not None and _same_pair(truth, answer, mode):
            answers = set(answer.relations)
            tp, fp, fn = tp + len(truths & answers), fp + len(answers - truths), fn + len(truths - answers)
        elif mode == "reference":
            continue
        else:
            fp += len(set(answer.relations)) if answer is not None else 0
            fn += len(truths)
        used += 1
    return {**_prf(tp, fp, fn), "questions": used, "skipped": len(gt) - used}


def _same_pair(truth: RelationTriple, answer: RelationTriple, mode: Mode) -> bool:
    if mode == "reference":
        return (truth.subject, truth.object) == (answer.subject, answer.object)
    return (truth.subject.strip().lower(), truth.object.strip().lower()) == (
        answer.subject.strip().lower(),
        answer.object.strip().lower(),
    )


def _prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


# ------------------------------------------------------------------------------ complex comprehension rows


def complex_comprehension_metrics(
    rows: Iterable[Mapping[str, Any]],
    *,
    mode: Mode = "reference",
    iou_threshold: float = 0.25,
    tile_size: float = 512,
) -> dict[str, Any]:
    """All complex-comprehension metrics of one answer file; rows are routed by ``category`` (task1…task6).

    - task1 detection, task4 object reasoning: :func:`.detection.rotated_map` (11-point and all-point mAP).
    - task2 relation detection: :func:`relation_prf` over the ``<…>`` tokens.
    - task3 relation reasoning: :func:`relation_reasoning_prf`.
    - task5: :func:`.scene_graph.scene_graph_recall`; task6: the same plus ``rotated_map`` of its detection
      sentences (``{"scene_graph": …, "detection": …}``).

    Rows of other categories are ignored; rows whose ground truth contains "due to the context length" or
    "..." (truncated, so not scorable) are skipped in both modes, and so are task-5 rows whose ground truth has
    no box, as published. Task-6 rows without a ground-truth box or with "sorry" (negatives) are skipped in
    reference (published); strict keeps them, so boxes an answer invents there count against the mAP. A
    metric that is undefined for the rows given (e.g. no ground-truth box at all in reference mode) is
    reported as ``{"undefined": reason}`` instead of failing the other tasks. ``rows`` reports, per task, the
    rows seen and the rows scored.
    """
    check_mode(mode)
    seen: dict[str, int] = defaultdict(int)
    scored: dict[str, int] = defaultdict(int)
    pairs = _ComplexPairs()
    count = 0
    for index, row in enumerate(rows):
        count += 1
        task = _text(row, "category", index).strip().lower()
        if task not in COMPLEX_TASKS:
            continue
        seen[task] += 1
        truth, answer = _text(row, "ground_truth", index), _text(row, "answer", index)
        # Truncated ground truths cannot be scored, in either mode.
        if "due to the context length" in truth or "..." in truth:
            continue
        if _route_complex_row(pairs, task, truth, answer, mode):
            scored[task] += 1
    if count == 0:
        raise ValueError("complex_comprehension_metrics got no rows: nothing to score")
    results = _complex_results(pairs, scored, mode=mode, iou_threshold=iou_threshold, tile_size=tile_size)
    results["rows"] = {task: {"seen": seen[task], "scored": scored[task]} for task in COMPLEX_TASKS if seen[task]}
    return results


class _ComplexPairs:
    """Ground-truth / answer lists of one answer file, collected per task for the metric functions."""

    def __init__(self) -> None:
        # defaultdicts so a task that never occurs costs nothing and the result routing stays uniform.
        self.detection: dict[str, tuple[list[list[Detection]], list[list[Detection]]]] = defaultdict(
            lambda: ([], [])
        )
        self.relations: tuple[list[list[str]], list[list[str]]] = ([], [])
        self.reasoning: tuple[list[RelationTriple | None], list[RelationTriple | None]] = ([], [])
        self.graphs: dict[str, tuple[list[SceneGraph], list[SceneGraph]]] = defaultdict(lambda: ([], []))


def _route_complex_row(pairs: _ComplexPairs, task: str, truth: str, answer: str, mode: Mode) -> bool:
    """Parse one task1–task6 row into ``pairs``; return whether it was scored (not skipped)."""
    if task == "task1":
        parsed = parse_detection(truth, answer, mode=mode)
        if parsed is None:
            return False
        _append(pairs.detection["task1"], parsed)
    elif task == "task2":
        _append(pairs.relations, (parse_relation_tokens(truth), parse_relation_tokens(answer)))
    elif task == "task3":
        _append(pairs.reasoning, (parse_relation_triple(truth), parse_relation_triple(answer)))
    elif task == "task4":
        _route_object_reasoning(pairs, truth, answer, mode)
    elif task == "task5":
        # Published: task-5 rows whose ground truth has no box are skipped.
        if not _has_box(truth):
            return False
        gt_graph = parse_region_scene_graph(truth, mode=mode)
        _append(pairs.graphs["task5"], (gt_graph, parse_region_scene_graph(answer, mode=mode)))
    else:
        return _route_image_scene_graph(pairs, truth, answer, mode)
    return True


def _route_object_reasoning(pairs: _ComplexPairs, truth: str, answer: str, mode: Mode) -> None:
    """Task 4: both sides parsed with the ground truth's categorised/uncategorised form."""
    categorised = is_categorised(truth)
    _append(
        pairs.detection["task4"],
        (
            parse_object_reasoning(truth, categorised=categorised, mode=mode),
            parse_object_reasoning(answer, categorised=categorised, mode=mode),
        ),
    )


def _route_image_scene_graph(pairs: _ComplexPairs, truth: str, answer: str, mode: Mode) -> bool:
    """Task 6: scene graph and detection sentences; return whether the row was scored."""
    # Strict keeps negatives and box-less ground truths: they have no triplet (recall skips them) but
    # the boxes an answer invents there are false positives of the detection mAP.
    if mode == "reference" and (not _has_box(truth) or "sorry" in truth):
        return False
    gt_parsed = parse_image_scene_graph(truth, answer=False, mode=mode)
    pred_parsed = parse_image_scene_graph(answer, answer=True, mode=mode)
    if gt_parsed is None or pred_parsed is None:
        return False
    _append(pairs.graphs["task6"], (gt_parsed[0], pred_parsed[0]))
    _append(pairs.detection["task6"], (gt_parsed[1], pred_parsed[1]))
    return True


def _complex_results(
    pairs: _ComplexPairs, scored: Mapping[str, int], *, mode: Mode, iou_threshold: float, tile_size: float
) -> dict[str, Any]:
    """Metrics of every task that had a scored row, in task order (the ``rows`` summary is added by the caller)."""
    results: dict[str, Any] = {}
    box_options = {"iou_threshold": iou_threshold, "mode": mode, "tile_size": tile_size}
    if scored["task1"]:
        results["task1"] = _defined(rotated_map, *pairs.detection["task1"], **box_options)
    if scored["task2"]:
        results["task2"] = relation_prf(*pairs.relations, mode=mode)
    if scored["task3"]:
        results["task3"] = _defined(relation_reasoning_prf, *pairs.reasoning, mode=mode)
    if scored["task4"]:
        results["task4"] = _defined(rotated_map, *pairs.detection["task4"], **box_options)
    if scored["task5"]:
        results["task5"] = _defined(scene_graph_recall, *pairs.graphs["task5"], **box_options)
    if scored["task6"]:
        results["task6"] = {
            "scene_graph": _defined(scene_graph_recall, *pairs.graphs["task6"], **box_options),
            "detection": _defined(rotated_map, *pairs.detection["task6"], **box_options),
        }
    return results


def _append(target: tuple[list[Any], list[Any]], pair: tuple[Any, Any]) -> None:
    target[0].append(pair[0])
    target[1].append(pair[1])


def _has_box(text: str) -> bool:
    # Published test: re.findall(r'\{(.+?)\}', gt) — any braces count, well-formed box or not.
    return _BRACES.search(text) is not None


def _defined(metric: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return metric(*args, **kwargs)
    except ValueError as error:  # undefined for these rows (e.g. no ground-truth box); keep the other tasks
        return {"undefined": str(error)}
