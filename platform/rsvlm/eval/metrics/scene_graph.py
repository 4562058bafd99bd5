"""Scene-graph recall and mean recall (FIT-RSFG task 5 region-level and task 6 image-level scene graphs).

The published evaluation is the neural-motifs / SGG-benchmark code vendored in om-ai-lab/ImageRAG
(``FIT_Eval/sgg_eval/``) in ``sgdet`` mode at R@1000 (answers hold far fewer triplets, so every triplet counts).

- A ground-truth triplet (subject class, relation, object class) is **recalled** when some predicted triplet
  has the same three labels and both its boxes reach rotated IoU **>=** ``iou_threshold`` (0.25) with the
  ground truth's subject and object boxes. No one-to-one constraint: one prediction may recall several
  identical ground truths. Boxes are compared in pixels of a ``tile_size`` tile; a box of ``None`` (the
  region a task-5 question gives) matches only ``None``.
- **Recall** is per image (recalled / ground-truth triplets), then averaged over images.
- **Mean recall** is per relation: per image, the recalled fraction of that relation's ground-truth triplets;
  averaged over the images where the relation occurs; then averaged over relations.

``mode="reference"`` reproduces the published faults, ``mode="strict"`` fixes them:

======================================  =========================================  =============================
fault                                   reference                                  strict
======================================  =========================================  =============================
image whose answer has no triplet       skipped (flatters the model)               recall 0
per-relation names                      shifted by one: ``relations[i]`` shows     each relation under its
                                        the recall of ``relations[i + 1]``;        own name
                                        ``over`` is never reported and the last
                                        name shows unknown relations
mean recall denominator                 all 58 relations, absent ones as 0         relations in the ground truth
labels outside the vocabulary           all equal to each other (id -1)            compared as written
per-image denominator                   distinct (subject, object) pairs           triplets
======================================  =========================================  =============================

(The parsers in :mod:`.fitrsfg_parse` reproduce the task-5 box-indexing fault, which lives in how the graph is
built rather than in how it is scored.)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Hashable, Sequence

from rsvlm.data.boxes import Box

from .fitrsfg_parse import FITRS_CLASSES, FITRS_RELATIONS, Mode, SceneGraph, check_mode
from .geometry import box_iou

_UNKNOWN = -1  # the published label id of any class or relation outside the vocabulary


def scene_graph_recall(
    gt_graphs: Sequence[SceneGraph],
    pred_graphs: Sequence[SceneGraph],
    *,
    iou_threshold: float = 0.25,
    mode: Mode = "reference",
    tile_size: float = 512,
    classes: Sequence[str] = FITRS_CLASSES,
    relations: Sequence[str] = FITRS_RELATIONS,
) -> dict[str, Any]:
    """Recall and mean recall of (subject, relation, object) triplets; ``gt_graphs[i]`` goes with ``pred_graphs[i]``.

    ``classes`` and ``relations`` are the published vocabularies, used in reference mode only. Images whose
    ground truth has no triplet are skipped in both modes (recall is undefined there). Returns ``{"recall",
    "mean_recall", "per_relation", "images", "images_skipped"}``; raises ``ValueError`` when no image can be
    scored (in reference also when every answer is empty: the published code then reports NaN).
    """
    check_mode(mode)
    _check_inputs(gt_graphs, pred_graphs)
    label, predicate = _labelers(mode, classes, relations)
    image_recalls: list[float] = []
    # reference: slot -> per-image recalls, slots as published (see _reference_slots); strict: name -> recalls
    per_relation: dict[Hashable, list[float]] = defaultdict(list)
    skipped = 0
    for truth, answer in zip(gt_graphs, pred_graphs):
        if not truth.relations or (mode == "reference" and not answer.relations):
            skipped += 1
            continue
        gt_triplets = _triplets(truth, label, predicate, tile_size)
        recalled = _recalled(gt_triplets, _triplets(answer, label, predicate, tile_size), iou_threshold)
        image_recalls.append(sum(recalled) / _image_denominator(truth, gt_triplets, mode))
        _add_relation_recalls(per_relation, gt_triplets, recalled, mode, len(relations))
    if not image_recalls:
        raise ValueError(
            f"scene_graph_recall could score no image ({skipped} skipped: ground truth without triplets"
            + (", or an answer without triplets, which the published code skips)" if mode == "reference" else ")")
        )
    named, mean_recall = _summarise_relations(per_relation, mode, relations)
    return {
        "recall": sum(image_recalls) / len(image_recalls),
        "mean_recall": mean_recall,
        "per_relation": named,
        "images": len(image_recalls),
        "images_skipped": skipped,
    }


def _check_inputs(gt_graphs: Sequence[SceneGraph], pred_graphs: Sequence[SceneGraph]) -> None:
    """Reject mismatched or empty inputs before scoring, so a misaligned pairing never scores silently."""
    if len(gt_graphs) != len(pred_graphs):
        raise ValueError(
            f"scene_graph_recall needs one predicted graph per image: got {len(pred_graphs)} predicted and "
            f"{len(gt_graphs)} ground-truth graphs"
        )
    if not gt_graphs:
        raise ValueError("scene_graph_recall got no images: nothing to score")


def _labelers(mode: Mode, classes: Sequence[str], relations: Sequence[str]) -> tuple[Any, Any]:
    """The (class label, relation) keys triplets are compared on: published ids in reference, names in strict."""
    class_index = {name: i for i, name in enumerate(classes)}
    relation_index = {name: i for i, name in enumerate(relations)}

    # Reference maps out-of-vocabulary names to one id (-1), so they all compare equal, as published;
    # None (a task-5 question's region) stays None in both modes.
    def label(name: str | None) -> Hashable:
        return class_index.get(name, _UNKNOWN) if mode == "reference" and name is not None else name

    def predicate(name: str) -> Hashable:
        return relation_index.get(name, _UNKNOWN) if mode == "reference" else name

    return label, predicate


def _recalled(
    gt_triplets: list[tuple[tuple, tuple]], pred_triplets: list[tuple[tuple, tuple]], iou_threshold: float
) -> list[bool]:
    """Whether each ground-truth triplet is matched by some prediction (labels equal, both boxes close)."""
    # No one-to-one constraint, as published: one prediction may recall several identical ground truths.
    return [
        any(
            labels == pred_labels and _close(boxes[0], pred_boxes[0], iou_threshold)
            and _close(boxes[1], pred_boxes[1], iou_threshold)
            for pred_labels, pred_boxes in pred_triplets
        )
        for labels, boxes in gt_triplets
    ]


def _image_denominator(truth: SceneGraph, gt_triplets: list[tuple[tuple, tuple]], mode: Mode) -> int:
    """The per-image recall denominator."""
    if mode == "reference":
        # Published: the denominator is the number of distinct (subject id, object id) pairs.
        return len({(s, o) for s, _, o in truth.relations})
    return len(gt_triplets)


def _add_relation_recalls(
    per_relation: dict[Hashable, list[float]],
    gt_triplets: list[tuple[tuple, tuple]],
    recalled: list[bool],
    mode: Mode,
    n_relations: int,
) -> None:
    """Append one image's recalled fraction for each relation key (published slots or names) it holds."""
    hits: dict[Hashable, int] = defaultdict(int)
    counts: dict[Hashable, int] = defaultdict(int)
    for (labels, _), hit in zip(gt_triplets, recalled):
        for key in _reference_slots(labels[1], n_relations) if mode == "reference" else (labels[1],):
            counts[key] += 1
            hits[key] += hit
    for key, count in counts.items():
        per_relation[key].append(hits[key] / count)


def _summarise_relations(
    per_relation: dict[Hashable, list[float]], mode: Mode, relations: Sequence[str]
) -> tuple[dict[str, float], float]:
    """The reported per-relation recalls and their mean recall."""
    if mode == "reference":
        # Published calculate_mean_recall: slots 1..58 averaged over all 58 (empty slots as 0) and reported
        # under relations[0..57], i.e. the name one position before the relation the slot holds.
        values = [_mean(per_relation.get(slot, [])) for slot in range(1, len(relations) + 1)]
        return dict(zip(relations, values)), sum(values) / len(relations)
    named = {str(name): _mean(per_relation[name]) for name in sorted(per_relation, key=str)}
    return named, sum(named.values()) / len(named)


def _triplets(graph: SceneGraph, label: Any, predicate: Any, tile_size: float) -> list[tuple[tuple, tuple]]:
    out = []
    for s, relation, o in graph.relations:
        subject, obj = graph.objects[s], graph.objects[o]
        out.append(
            (
                (label(subject.label), predicate(relation), label(obj.label)),
                (_pixels(subject.box, tile_size), _pixels(obj.box, tile_size)),
            )
        )
    return out


def _reference_slots(relation_id: Hashable, n_relations: int) -> tuple[int, ...]:
    """The published recall_hit / recall_count slots a ground-truth relation id increments.

    The counters have ``len(relations) + 1`` slots, slot 0 meant for "all relations". The relation ids it is
    fed start at 0 (no background entry), so relation id r lands in slot r: ``over`` (id 0) shares slot 0 with
    the total, and an unknown relation (id -1) lands in the last slot through Python's negative indexing.
    """
    return (0, int(relation_id) % (n_relations + 1))  # type: ignore[call-overload]


def _pixels(box: Box | None, tile_size: float) -> Box | None:
    return None if box is None else box.scaled(tile_size, tile_size)


def _close(a: Box | None, b: Box | None, iou_threshold: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return box_iou(a, b) >= iou_threshold


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
