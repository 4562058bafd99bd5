"""Rotated-box mean average precision (FIT-RSFG tasks 1, 4 and 6), VOC 11-point and all-point.

The published evaluation is mmrotate's ``eval_rbbox_map`` as vendored in om-ai-lab/ImageRAG
(``FIT_Eval/eval_map.py``), called with ``iou_thr=0.25`` and ``use_07_metric=True``. Conventions here:

- **No confidences.** A language model writes boxes without scores, so every prediction scores 1.0 and the
  ranking is the order given: images in input order, boxes in answer order. AP therefore depends on that
  order (a false positive before a true positive costs more than after it). The published code sorts equal
  scores with numpy's non-stable ``argsort``; that keeps the given order for the sizes seen in practice but
  is not guaranteed to, which is the one thing not reproduced.
- **Matching** (VOC): per image and class, predictions in order; each takes the ground-truth box of highest
  IoU (the first on ties); it is a true positive when that IoU is **>=** the threshold and the box is not
  taken yet, otherwise a false positive (a duplicate is a false positive even if another box would fit).
- **IoU** in pixels of a ``tile_size`` square tile (boxes are parsed in fractions of it), exact polygon IoU
  (:func:`.geometry.box_iou`); the published code uses mmcv's float32 kernel, so an IoU within ~1e-7 of the
  threshold may fall on the other side there.
- **AP**, both reported: VOC07 *11-point* (mean over recall thresholds 0, 0.1, … 1.0 of the highest precision
  at a recall >= the threshold; 0 where none) — the published number — and *all-point* (VOC2010+: area under
  the precision envelope). The published code computes precision in float32 (differences ~1e-7).
- **mAP** is the unweighted mean of per-class APs.

``mode="reference"`` reproduces the published faults; ``mode="strict"`` fixes them:

================================  ===========================================  ====================================
fault                             reference                                    strict
================================  ===========================================  ====================================
image without ground-truth box    dropped: its predictions cost nothing        scored: its predictions are FPs
class with predictions, no GT     not in the mean                              AP 0, in the mean
no ground-truth box at all        ``ValueError`` (published: ``IndexError``)   AP 0 per predicted class; ValueError
                                                                               only if there is no box at all
label not among the 48 classes    predictions counted as the last class        its own class, like any other
                                  (``stadium``), ground truth ignored
11-point recall thresholds        ``i * 0.1`` (0.30000000000000004 …): a       ``i / 10``
                                  recall of exactly 0.3, 0.6 or 0.7 misses it
================================  ===========================================  ====================================
"""

from __future__ import annotations

from typing import Any, Sequence

from .fitrsfg_parse import FITRS_CLASSES, Detection, Mode, check_mode
from .geometry import box_iou

UNCATEGORISED = "(uncategorised)"  # the per-class key of label None (strict task 4 boxes named by no class)


def average_precision(
    recalls: Sequence[float], precisions: Sequence[float], method: str = "11point", *, mode: Mode = "strict"
) -> float:
    """AP from a precision/recall curve (one point per ranked prediction, recall non-decreasing).

    ``method="11point"``: VOC07, mean over the 11 recall thresholds t of max{precision at recall >= t} (0 if
    no point reaches t); ``mode`` only changes the thresholds (see the module table). ``method="all_point"``:
    VOC2010+, the curve is padded with (0, 0) and (1, 0), precision replaced by its running maximum from the
    right, and the area summed over the recall steps. An empty curve (no prediction) gives 0.
    """
    check_mode(mode)
    if len(recalls) != len(precisions):
        raise ValueError(f"average_precision got {len(recalls)} recalls and {len(precisions)} precisions")
    if method == "11point":
        total = 0.0
        for i in range(11):
            # i * 0.1 is what np.arange(0, 1 + 1e-3, 0.1) yields (0.30000000000000004, 0.6000000000000001, …).
            threshold = i * 0.1 if mode == "reference" else i / 10
            total += max((p for r, p in zip(recalls, precisions) if r >= threshold), default=0.0)
        return total / 11
    if method == "all_point":
        mrec = [0.0, *recalls, 1.0]
        mpre = [0.0, *precisions, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])
    raise ValueError(f"unknown AP method {method!r}: choose 11point or all_point")


def rotated_map(
    gt: Sequence[Sequence[Detection]],
    pred: Sequence[Sequence[Detection]],
    *,
    iou_threshold: float = 0.25,
    mode: Mode = "reference",
    tile_size: float = 512,
    classes: Sequence[str] = FITRS_CLASSES,
) -> dict[str, Any]:
    """Mean AP of rotated boxes over classes; ``gt[i]`` and ``pred[i]`` are the boxes of image ``i``.

    ``classes`` is the published vocabulary, used in reference mode only (which classes exist, and where
    unknown labels go). Returns ``{"map_11point", "map_all_point", "per_class", "images",
    "images_without_gt"}``: ``per_class[label] = {"ap_11point", "ap_all_point", "ground_truths",
    "predictions", "true_positives", "in_mean"}`` for every class with a ground-truth box or a prediction
    (label ``None`` reported as :data:`UNCATEGORISED`); ``images`` counts the images scored.
    """
    check_mode(mode)
    if len(gt) != len(pred):
        raise ValueError(
            f"rotated_map needs one prediction list per image: got {len(pred)} prediction lists and {len(gt)} "
            "ground-truth lists"
        )
    if not gt:
        raise ValueError("rotated_map got no images: nothing to score")
    images = list(zip(gt, pred))
    # Counted before reference mode drops these images, so both modes report the same number.
    without_gt = sum(1 for truths, _ in images if not truths)
    if mode == "reference":
        images, labels = _reference_images(images, classes)
    else:
        images, labels = _strict_images(images)

    per_class: dict[str, dict[str, Any]] = {}
    for label in labels:
        entry = _score_class(images, label, iou_threshold=iou_threshold, mode=mode, tile_size=tile_size)
        if entry is not None:
            per_class[UNCATEGORISED if label is None else label] = entry
    scored = [entry for entry in per_class.values() if entry["in_mean"]]
    # Only reference can get here with nothing to average (every ground-truth label outside the vocabulary);
    # the published code then reports 0.0.
    return {
        "map_11point": sum(e["ap_11point"] for e in scored) / len(scored) if scored else 0.0,
        "map_all_point": sum(e["ap_all_point"] for e in scored) / len(scored) if scored else 0.0,
        "per_class": per_class,
        "images": len(images),
        "images_without_gt": without_gt,
    }


_Images = list[tuple[Sequence[Detection], Sequence[Detection]]]


def _reference_images(images: _Images, classes: Sequence[str]) -> tuple[_Images, list[str | None]]:
    """Reference mode: the images and class labels the published code scores, with its faults."""
    # Published: images without ground truth are dropped, so their predictions cost nothing.
    images = [(truths, preds) for truths, preds in images if truths]
    if not images:
        raise ValueError(
            "rotated_map: no image has a ground-truth box, so mAP is undefined (the published eval_rbbox_map "
            "fails here with an IndexError)"
        )
    known = set(classes)
    # Published: ground-truth labels outside the vocabulary match no class id; predictions with label -1
    # are appended to per_class[-1], the last class.
    images = [
        (
            [d for d in truths if d.label in known],
            [Detection(d.label if d.label in known else classes[-1], d.box) for d in preds],
        )
        for truths, preds in images
    ]
    return images, list(classes)


def _strict_images(images: _Images) -> tuple[_Images, list[str | None]]:
    """Strict mode: every image is scored, and every label seen (first-seen order) is its own class."""
    labels = list(dict.fromkeys(d.label for truths, preds in images for d in (*truths, *preds)))
    if not labels:
        raise ValueError("rotated_map: no ground-truth and no predicted box in any image, mAP is undefined")
    return images, labels


def _score_class(
    images: _Images, label: str | None, *, iou_threshold: float, mode: Mode, tile_size: float
) -> dict[str, Any] | None:
    """One class's AP entry over all images, or None when it has neither ground truth nor prediction."""
    flags: list[bool] = []
    n_gt = 0
    for truths, preds in images:
        # Matching is per image: a prediction may only take a ground-truth box of its own image.
        class_truths = [d.box.scaled(tile_size, tile_size) for d in truths if d.label == label]
        class_preds = [d.box.scaled(tile_size, tile_size) for d in preds if d.label == label]
        n_gt += len(class_truths)
        flags += _match(class_truths, class_preds, iou_threshold)
    if n_gt == 0 and not flags:
        return None
    recalls, precisions, hits = [], [], 0
    for rank, hit in enumerate(flags, start=1):
        hits += hit
        recalls.append(hits / n_gt if n_gt else 0.0)
        precisions.append(hits / rank)
    return {
        "ap_11point": average_precision(recalls, precisions, "11point", mode=mode),
        "ap_all_point": average_precision(recalls, precisions, "all_point", mode=mode),
        "ground_truths": n_gt,
        "predictions": len(flags),
        "true_positives": hits,
        # Reference averages only classes with ground truth; strict also those only predicted (AP 0).
        "in_mean": n_gt > 0 or mode == "strict",
    }


def _match(truths: list[Any], preds: list[Any], iou_threshold: float) -> list[bool]:
    """VOC greedy matching in prediction order: True for a true positive, False for a false positive."""
    covered = [False] * len(truths)
    flags = []
    for box in preds:
        ious = [box_iou(box, truth) for truth in truths]
        best = max(ious, default=0.0)
        j = ious.index(best) if ious else -1  # first maximum, like numpy's argmax
        hit = bool(ious) and best >= iou_threshold and not covered[j]
        if hit:
            covered[j] = True
        flags.append(hit)
    return flags
