"""Accuracy@IoU for referring / grounding answers (GeoChat bench, TEOChat).

A model answers a referring question with zero or more boxes; the sample has one or more ground-truth
boxes. Predictions are matched one-to-one to ground truths and accuracy is the fraction of ground-truth
boxes that got a good enough match — the geochat_bench definition that TEOChat also reports.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from rsvlm.data.boxes import Box, BoxConvention, parse_boxes

from .geometry import box_iou


def box_matching_accuracy(
    pred_boxes: Sequence[Sequence[Box]],
    gt_boxes: Sequence[Sequence[Box]],
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Accuracy@``iou_threshold`` = hits / total ground-truth boxes, over all samples.

    Per sample, every (prediction, ground truth) pair is scored with :func:`box_iou` and pairs are taken
    greedily, highest IoU first, each prediction and each ground truth used at most once — so one
    prediction cannot cover two ground-truth boxes. A matched pair is a hit when IoU **>=** the threshold.
    Note GeoChat's own evaluation script tests ``iou > 0.5``; the two differ only for an IoU of exactly
    the threshold.

    Boxes must be in consistent units, pixels if any is rotated (see :mod:`.geometry`).

    Returns ``{"accuracy", "hits", "ground_truth_boxes", "mean_best_iou"}``; ``mean_best_iou`` is the
    mean, over ground-truth boxes, of the best IoU any prediction of the same sample reaches with it
    (0 when there is none), regardless of matching — a threshold-free diagnostic.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(
            f"box_matching_accuracy needs one prediction list per sample: got {len(pred_boxes)} prediction "
            f"lists and {len(gt_boxes)} ground-truth lists"
        )
    hits = 0
    total = 0
    best_iou_sum = 0.0
    for predictions, truths in zip(pred_boxes, gt_boxes):
        total += len(truths)
        ious = [[box_iou(p, t) for t in truths] for p in predictions]
        for j in range(len(truths)):
            best_iou_sum += max((row[j] for row in ious), default=0.0)
        pairs = sorted(
            ((ious[i][j], i, j) for i in range(len(predictions)) for j in range(len(truths))),
            key=lambda pair: pair[0],
            reverse=True,  # sorted() is stable, so ties keep prediction order: deterministic matching
        )
        used_pred: set[int] = set()
        used_gt: set[int] = set()
        for iou, i, j in pairs:
            # Below the threshold nothing further can be a hit, since pairs come in decreasing IoU.
            if iou < iou_threshold:
                break
            if i in used_pred or j in used_gt:
                continue
            used_pred.add(i)
            used_gt.add(j)
            hits += 1
    if total == 0:
        raise ValueError("box_matching_accuracy got no ground-truth boxes: accuracy is undefined")
    return {
        "accuracy": hits / total,
        "hits": hits,
        "ground_truth_boxes": total,
        "mean_best_iou": best_iou_sum / total,
    }


def grounding_accuracy(
    rows: Iterable[Mapping[str, Any]],
    convention: BoxConvention = BoxConvention.geochat,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Accuracy@``iou_threshold`` (IoU **>=** the threshold) of answer rows whose ``answer`` and
    ``ground_truth`` write boxes in ``convention`` (GeoChat ``{<x1><y1><x2><y2>|θ}``, FIT-RS rotated, or
    [0,1000] ``[[x1,y1,x2,y2]]``); rotated boxes are compared as polygons. An answer without a parsable box
    matches nothing. See :func:`box_matching_accuracy` for the matching and the returned fields.
    """
    rows = list(rows)
    return box_matching_accuracy([parse_boxes(str(r.get("answer") or ""), convention) for r in rows],
                                 [parse_boxes(str(r["ground_truth"]), convention) for r in rows], iou_threshold)
