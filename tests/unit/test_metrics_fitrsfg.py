"""FIT-RSFG metrics: golden values computed by hand (in the comments) and one test per published fault that shows
what ``mode="reference"`` (published behaviour) and ``mode="strict"`` (fixed) give."""

from __future__ import annotations

import pytest

from rsvlm.data.boxes import Box
from rsvlm.eval.metrics import (
    average_precision,
    complex_comprehension_metrics,
    fitrsfg_vqa_accuracy,
    relation_prf,
    relation_reasoning_prf,
    rotated_map,
    scene_classification_metrics,
    scene_graph_recall,
)
from rsvlm.eval.metrics.detection import UNCATEGORISED
from rsvlm.eval.metrics.fitrsfg_parse import (
    FITRS_CLASSES,
    FITRS_RELATIONS,
    REGION_PLACEHOLDER,
    Detection,
    RelationTriple,
    SceneGraph,
    SceneObject,
    fitrs_boxes,
    parse_detection,
    parse_image_scene_graph,
    parse_object_reasoning,
    parse_region_scene_graph,
    parse_relation_tokens,
    parse_relation_triple,
)

MODES = ("reference", "strict")


def pct(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> Box:
    """A box given in the [0, 100] units of the FIT-RS text (stored, like parsed boxes, in fractions)."""
    return Box(cx / 100, cy / 100, w / 100, h / 100, angle)


def det(label: str | None, cx: float, cy: float, w: float = 10, h: float = 10) -> Detection:
    return Detection(label, pct(cx, cy, w, h))


def rb(cx: float, cy: float, w: float, h: float, theta: int = 90) -> str:
    """One box as FIT-RS writes it (θ = 90 is axis-aligned with w and h swapped on screen; IoU is unaffected
    when both sides use it)."""
    return f"{{<{cx:.2f}><{cy:.2f}><{w:.2f}><{h:.2f}>|<{theta}>}}"


# ---------------------------------------------------------------------------------------------------- parsing


def test_boxes_with_a_side_below_2_are_dropped_and_2_is_kept() -> None:
    text = " ".join(
        [rb(50, 50, 1.99, 10), rb(50, 50, 2, 10), rb(50, 50, 10, 1.5), rb(20, 20, 10, 2), "{<a><b><c><d>|<1>}"]
    )
    assert fitrs_boxes(text) == [pct(50, 50, 2, 10, -90.0), pct(20, 20, 10, 2, -90.0)]


def test_parse_detection_labels_every_box_with_the_ground_truth_class() -> None:
    gt = f"There are 2 ships in the image: <rbox>({rb(20, 20, 10, 5)}, {rb(60, 60, 12, 6)})</rbox>"
    answer = f"There is 1 ship in the image: <rbox>({rb(20, 20, 10, 5)})</rbox>"
    for mode in MODES:
        truths, preds = parse_detection(gt, answer, mode=mode)
        assert [d.label for d in truths] == ["ship", "ship"] and [d.label for d in preds] == ["ship"]


def test_parse_detection_negative_sample() -> None:
    gt = "There is no ship in the image."
    answer = f"There are 1 ships in the image: <rbox>({rb(20, 20, 10, 5)})</rbox>"
    assert parse_detection(gt, answer, mode="reference") is None  # row not scored at all
    truths, preds = parse_detection(gt, answer, mode="strict")  # scored: the box is a false positive
    assert truths == [] and preds == [Detection("ship", pct(20, 20, 10, 5, -90.0))]


def test_object_reasoning_groups_with_several_boxes() -> None:
    a, b, c = rb(10, 10, 8, 8), rb(30, 30, 8, 8), rb(70, 70, 8, 8)
    text = f"There are 2 categories: <ref>ships</ref><rbox>({a}, {b})</rbox> and <ref>docks</ref><rbox>({c})</rbox>"
    boxes = fitrs_boxes(a + b + c)
    # Published: zip(one entry per box, one class per group) -> b gets "dock" and c is lost.
    assert parse_object_reasoning(text, categorised=True, mode="reference") == [
        Detection("ship", boxes[0]),
        Detection("dock", boxes[1]),
    ]
    assert parse_object_reasoning(text, categorised=True, mode="strict") == [
        Detection("ship", boxes[0]),
        Detection("ship", boxes[1]),
        Detection("dock", boxes[2]),
    ]


def test_object_reasoning_without_categories_and_duplicates() -> None:
    text = f"The objects are at <rbox>({rb(10, 10, 8, 8)}, {rb(10, 10, 8, 8)}, {rb(40, 40, 8, 8)})</rbox>"
    ref = parse_object_reasoning(text, categorised=False, mode="reference")
    strict = parse_object_reasoning(text, categorised=False, mode="strict")
    assert [d.label for d in ref] == ["boat", "boat"]  # published class id 1; the duplicate box removed
    assert [d.label for d in strict] == [None, None]


def test_relation_parsers() -> None:
    assert parse_relation_tokens("tank <not co-storage with> tank, tank <co-storage with> tank") == [
        "not co-storage with",
        "co-storage with",
    ]
    assert parse_relation_triple("subject: ship, object: dock, relation: <rel>docked at</rel>.") == RelationTriple(
        "ship", "dock", ("docked at",)
    )
    assert parse_relation_triple("subject: ship, object: dock, no relation tag") is None
    assert parse_relation_triple("garbage") is None


REGION_GT = (
    "The ship on the left part of the image. "
    f"A <ref>dock</ref><rbox>({rb(30, 40, 10, 10)})</rbox> <rel>over</rel> it. "
    f"It is <rel>adjacent</rel> <ref>car</ref><rbox>({rb(70, 60, 10, 10)})</rbox>."
)


def test_region_scene_graph_layouts() -> None:
    dock, car = fitrs_boxes(rb(30, 40, 10, 10))[0], fitrs_boxes(rb(70, 60, 10, 10))[0]
    region = SceneObject("", REGION_PLACEHOLDER)
    # Published: the (subject, object) pairs are stacked, [dock, region] + [region, car], and looked up by ids
    # that count triplets: "dock over it" is (1, over, 0), "it adjacent car" is (0, adjacent, 2).
    assert parse_region_scene_graph(REGION_GT, mode="reference") == SceneGraph(
        (SceneObject("dock", dock), region, region, SceneObject("car", car)),
        ((1, "over", 0), (0, "adjacent", 2)),
    )
    # Strict: the region (given by the question, not scored) then one object per triplet.
    assert parse_region_scene_graph(REGION_GT, mode="strict") == SceneGraph(
        (SceneObject(None, None), SceneObject("dock", dock), SceneObject("car", car)),
        ((1, "over", 0), (0, "adjacent", 2)),
    )


def test_image_scene_graph_parse() -> None:
    s, d, c = rb(20, 20, 10, 10), rb(25, 20, 10, 10), rb(80, 80, 10, 10)
    gt = (
        f"<ref>ships</ref><rbox>({s})</rbox> <rel>docked alongside with</rel> <ref>dock</ref><rbox>({d})</rbox>. "
        f"Sorry, <ref>car</ref><rbox>({c})</rbox> is hidden. There is a <ref>car</ref><rbox>({c})</rbox>"
    )
    graph, dets = parse_image_scene_graph(gt, answer=False, mode="reference")
    assert graph.relations == ((0, "docked alongside with", 1),)
    assert [o.label for o in graph.objects] == ["ship", "dock"]
    assert [x.label for x in dets] == ["car"]  # the "sorry" sentence of a ground truth is skipped
    _, answer_dets = parse_image_scene_graph(gt, answer=True, mode="reference")
    assert len(answer_dets) == 2  # ... but not in an answer (published)


def test_image_scene_graph_with_two_object_boxes() -> None:
    text = (
        f"<ref>ship</ref><rbox>({rb(20, 20, 10, 10)})</rbox> <rel>approach</rel> "
        f"<ref>dock</ref><rbox>({rb(40, 40, 10, 10)}, {rb(60, 60, 10, 10)})</rbox>"
    )
    assert parse_image_scene_graph(text, answer=True, mode="reference") is None  # the row is skipped
    graph, _ = parse_image_scene_graph(text, answer=True, mode="strict")
    assert graph.relations == ((0, "approach", 1), (2, "approach", 3))


# ----------------------------------------------------------------------------------------- average precision


def test_ap_two_ground_truths_three_predictions() -> None:
    # One image, g1 and g2; predictions in order p1 = g1 (TP), p2 elsewhere (FP), p3 = g2 (TP).
    # cumulative TP 1, 1, 2 -> precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # 11-point: t = 0 … 0.5 (6 thresholds) reach precision 1; t = 0.6 … 1.0 (5) only the last point, 2/3:
    #   (6 + 5 * 2/3) / 11 = 28/33.  All-point: 0.5 * 1 + 0.5 * 2/3 = 5/6.
    gt = [[det("ship", 25, 25), det("ship", 75, 75)]]
    pred = [[det("ship", 25, 25), det("ship", 50, 50), det("ship", 75, 75)]]
    for mode in MODES:
        result = rotated_map(gt, pred, mode=mode)
        assert result["map_11point"] == pytest.approx(28 / 33)
        assert result["map_all_point"] == pytest.approx(5 / 6)
        assert result["per_class"]["ship"] == {
            "ap_11point": pytest.approx(28 / 33),
            "ap_all_point": pytest.approx(5 / 6),
            "ground_truths": 2,
            "predictions": 3,
            "true_positives": 2,
            "in_mean": True,
        }


def test_eleven_point_thresholds_float_quirk() -> None:
    # 10 ground truths, 3 predictions all right: recall 0.1, 0.2, 0.3 at precision 1.
    # Published thresholds are np.arange(0, 1.001, 0.1): the 4th is 0.30000000000000004 > 0.3, so only
    # t = 0, 0.1, 0.2 count: 3/11. With exact thresholds t = 0.3 counts too: 4/11.
    recalls, precisions = [1 / 10, 2 / 10, 3 / 10], [1.0, 1.0, 1.0]
    assert average_precision(recalls, precisions, "11point", mode="reference") == pytest.approx(3 / 11)
    assert average_precision(recalls, precisions, "11point", mode="strict") == pytest.approx(4 / 11)
    # All-point: 0.3 * 1.
    assert average_precision(recalls, precisions, "all_point") == pytest.approx(0.3)
    assert average_precision([], [], "11point") == 0.0 and average_precision([], [], "all_point") == 0.0
    with pytest.raises(ValueError, match="unknown AP method"):
        average_precision(recalls, precisions, "coco")
    with pytest.raises(ValueError, match="3 recalls and 2 precisions"):
        average_precision(recalls, precisions[:2])


def test_rotated_iou_threshold_is_inclusive_at_025() -> None:
    # Ground truth spans x 25..75 and y 25..75 (percent). A prediction spanning x 25..37.5, y 25..75:
    # intersection 12.5 * 50, union 50 * 50 -> IoU exactly 0.25 (exact in pixels too: 64 * 256 / 256²).
    gt = [[Detection("ship", pct(50, 50, 50, 50))]]
    at = [[Detection("ship", pct(31.25, 50, 12.5, 50))]]
    # x 25..37.4: IoU = 12.4 / 50 = 0.248 < 0.25.
    below = [[Detection("ship", pct(31.2, 50, 12.4, 50))]]
    for mode in MODES:
        assert rotated_map(gt, at, mode=mode)["map_11point"] == 1.0
        assert rotated_map(gt, below, mode=mode)["map_11point"] == 0.0
        assert rotated_map(gt, at, iou_threshold=0.5, mode=mode)["map_11point"] == 0.0


def test_rotated_boxes_use_their_polygons() -> None:
    # A 40 x 4 bar at 45° against the same bar (IoU 1) and against it turned a further 90° (a cross:
    # intersection 4 * 4 = 16, union 160 + 160 - 16 = 304, IoU 0.053). Axis-aligned enclosing boxes would
    # call the cross identical.
    gt_text = f"There is 1 bridge in the image: <rbox>({rb(50, 50, 40, 4, 45)})</rbox>"
    same = f"<rbox>({rb(50, 50, 40, 4, 45)})</rbox>"
    cross = f"<rbox>({rb(50, 50, 4, 40, 45)})</rbox>"  # w and h swapped at the same angle = turned by 90°
    truths, preds = parse_detection(gt_text, same)
    assert rotated_map([truths], [preds])["map_11point"] == 1.0
    truths, preds = parse_detection(gt_text, cross)
    assert rotated_map([truths], [preds])["map_11point"] == 0.0


def test_voc_matching_takes_the_best_box_even_if_already_taken() -> None:
    # g1 = (50, 50) and g2 = (54, 50), 20 x 20 (IoU between them 320 / 480 = 2/3). Two predictions equal to g1:
    # both pick g1 (IoU 1); the second is a false positive although it overlaps g2 at 2/3 (VOC rule).
    # TP, FP -> precision 1, 1/2 at recall 1/2, 1/2 -> 11-point: 6 thresholds up to 0.5 -> 6/11.
    gt = [[det("ship", 50, 50, 20, 20), det("ship", 54, 50, 20, 20)]]
    pred = [[det("ship", 50, 50, 20, 20), det("ship", 50, 50, 20, 20)]]
    assert rotated_map(gt, pred)["map_11point"] == pytest.approx(6 / 11)


def test_fault_map_ignores_images_without_ground_truth() -> None:
    # Image 1 has no ground truth but a hallucinated ship; image 2 one ship found exactly.
    gt = [[], [det("ship", 50, 50)]]
    pred = [[det("ship", 20, 20)], [det("ship", 50, 50)]]
    ref = rotated_map(gt, pred, mode="reference")
    assert ref["map_11point"] == 1.0 and ref["images"] == 1 and ref["images_without_gt"] == 1
    # Strict: ranked FP then TP: precision 0, 1/2 at recall 0, 1 -> every 11-point threshold reaches 1/2 at
    # recall 1: 0.5; all-point: 1 * 0.5.
    strict = rotated_map(gt, pred, mode="strict")
    assert strict["map_11point"] == pytest.approx(0.5) and strict["map_all_point"] == pytest.approx(0.5)
    assert strict["images"] == 2


def test_fault_map_with_no_ground_truth_box_at_all() -> None:
    gt: list[list[Detection]] = [[], []]
    pred = [[det("ship", 20, 20)], []]
    with pytest.raises(ValueError, match="no image has a ground-truth box"):
        rotated_map(gt, pred, mode="reference")
    # Strict: a class that is only predicted has AP 0 and counts in the mean.
    strict = rotated_map(gt, pred, mode="strict")
    assert strict["map_11point"] == 0.0 and strict["per_class"]["ship"]["ap_11point"] == 0.0
    with pytest.raises(ValueError, match="no ground-truth and no predicted box"):
        rotated_map(gt, [[], []], mode="strict")


def test_class_only_predicted_counts_in_strict_only() -> None:
    gt = [[det("ship", 50, 50)]]
    pred = [[det("ship", 50, 50), det("car", 20, 20)]]
    assert rotated_map(gt, pred, mode="reference")["map_11point"] == 1.0  # car has no ground truth: not averaged
    assert rotated_map(gt, pred, mode="strict")["map_11point"] == 0.5  # (1 + 0) / 2


def test_labels_outside_the_vocabulary() -> None:
    gt = [[det("spaceship", 50, 50)]]
    pred = [[det("spaceship", 50, 50)]]
    ref = rotated_map(gt, pred, mode="reference")
    # Published: the ground truth matches no class id; the prediction (id -1) lands in the last class.
    assert ref["map_11point"] == 0.0 and ref["per_class"] == {
        FITRS_CLASSES[-1]: {
            "ap_11point": 0.0,
            "ap_all_point": 0.0,
            "ground_truths": 0,
            "predictions": 1,
            "true_positives": 0,
            "in_mean": False,
        }
    }
    assert rotated_map(gt, pred, mode="strict")["map_11point"] == 1.0


def test_fault_task4_uncategorised_boxes_pooled_into_one_class() -> None:
    # Row B (no categories): truth b, answer c elsewhere. Row A: boats, truth a found exactly.
    b, c, a = rb(20, 20, 10, 10), rb(80, 80, 10, 10), rb(50, 50, 10, 10)
    row_b = (f"The objects are <rbox>({b})</rbox>", f"The objects are <rbox>({c})</rbox>", False)
    row_a = (
        f"There are 1 categories: <ref>boats</ref><rbox>({a})</rbox>",
        f"There are 1 categories: <ref>boats</ref><rbox>({a})</rbox>",
        True,
    )
    results = {}
    for mode in MODES:
        gt = [parse_object_reasoning(t, categorised=cat, mode=mode) for t, _, cat in (row_b, row_a)]
        pred = [parse_object_reasoning(p, categorised=cat, mode=mode) for _, p, cat in (row_b, row_a)]
        results[mode] = rotated_map(gt, pred, mode=mode)
    # Reference: both rows are "boat": FP then TP out of 2 -> precision 0, 1/2 at recall 0, 1/2.
    #   11-point: thresholds 0 … 0.5 reach 1/2 -> 6 * 0.5 / 11 = 3/11; all-point: 0.5 * 0.5 = 0.25.
    assert results["reference"]["map_11point"] == pytest.approx(3 / 11)
    assert results["reference"]["map_all_point"] == pytest.approx(0.25)
    # Strict: boat AP 1, uncategorised AP 0 -> 0.5.
    assert results["strict"]["map_11point"] == pytest.approx(0.5)
    assert set(results["strict"]["per_class"]) == {"boat", UNCATEGORISED}


def test_rotated_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no images"):
        rotated_map([], [])
    with pytest.raises(ValueError, match="one prediction list per image"):
        rotated_map([[det("ship", 50, 50)]], [])
    with pytest.raises(ValueError, match="unknown mode 'lenient'"):
        rotated_map([[det("ship", 50, 50)]], [[]], mode="lenient")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- scene graphs


def graph(*triplets: tuple[str, tuple[float, float], str, str, tuple[float, float]]) -> SceneGraph:
    """A task-6 style graph: each triplet (subject, its centre, relation, object, its centre), 10 x 10 boxes."""
    objects: list[SceneObject] = []
    relations = []
    for subject, s_centre, relation, obj, o_centre in triplets:
        relations.append((len(objects), relation, len(objects) + 1))
        objects += [SceneObject(subject, pct(*s_centre, 10, 10)), SceneObject(obj, pct(*o_centre, 10, 10))]
    return SceneGraph(tuple(objects), tuple(relations))


EMPTY = SceneGraph((), ())


def test_scene_graph_recall_golden() -> None:
    # Two ground-truth triplets; the answer gets the first, and the second with the wrong relation.
    # recall 1/2; per relation: "over" 1, "approach" 0 -> strict mean recall 1/2.
    gt = [graph(("ship", (20, 20), "over", "dock", (30, 20)), ("car", (60, 60), "approach", "truck", (70, 60)))]
    pred = [graph(("ship", (20, 20), "over", "dock", (30, 20)), ("car", (60, 60), "away from", "truck", (70, 60)))]
    strict = scene_graph_recall(gt, pred, mode="strict")
    assert strict["recall"] == 0.5 and strict["mean_recall"] == 0.5
    assert strict["per_relation"] == {"approach": 0.0, "over": 1.0}
    ref = scene_graph_recall(gt, pred, mode="reference")
    assert ref["recall"] == 0.5
    # Reference: "over" (id 0) shares slot 0 with the total and is never reported; "approach" (id 11) sits in
    # slot 11 with 0; every reported slot is 0 -> mean recall 0 over 58.
    assert ref["mean_recall"] == 0.0 and len(ref["per_relation"]) == len(FITRS_RELATIONS)


def test_scene_graph_box_threshold_is_inclusive() -> None:
    # Object box of the ground truth 50 x 50 at (50, 50); answer's object spans x 25..37.5 -> IoU 0.25 exactly.
    truth = SceneGraph(
        (SceneObject("ship", pct(10, 10, 10, 10)), SceneObject("dock", pct(50, 50, 50, 50))), ((0, "over", 1),)
    )

    def answer(cx: float, w: float) -> SceneGraph:
        return SceneGraph(
            (SceneObject("ship", pct(10, 10, 10, 10)), SceneObject("dock", pct(cx, 50, w, 50))), ((0, "over", 1),)
        )

    for mode in MODES:
        assert scene_graph_recall([truth], [answer(31.25, 12.5)], mode=mode)["recall"] == 1.0
        assert scene_graph_recall([truth], [answer(31.2, 12.4)], mode=mode)["recall"] == 0.0


def test_fault_scene_graph_empty_answer_is_skipped() -> None:
    gt = [
        graph(("ship", (20, 20), "over", "dock", (30, 20))),
        graph(("car", (60, 60), "approach", "truck", (70, 60))),
    ]
    pred = [graph(("ship", (20, 20), "over", "dock", (30, 20))), EMPTY]
    ref = scene_graph_recall(gt, pred, mode="reference")
    assert ref["recall"] == 1.0 and ref["images"] == 1 and ref["images_skipped"] == 1
    strict = scene_graph_recall(gt, pred, mode="strict")
    assert strict["recall"] == 0.5 and strict["images"] == 2
    assert strict["per_relation"] == {"approach": 0.0, "over": 1.0}
    with pytest.raises(ValueError, match="published code skips"):
        scene_graph_recall(gt, [EMPTY, EMPTY], mode="reference")
    assert scene_graph_recall(gt, [EMPTY, EMPTY], mode="strict")["recall"] == 0.0


def test_fault_mean_recall_names_shifted_by_one() -> None:
    # One triplet of relation id 1, "not co-storage with", recalled.
    gt = [graph(("tank", (20, 20), "not co-storage with", "tank", (40, 20)))]
    ref = scene_graph_recall(gt, gt, mode="reference")
    # Published: slot 1 holds relation id 1 but is printed under relations[0] = "over"; averaged over all 58.
    assert ref["per_relation"]["over"] == 1.0
    assert ref["per_relation"]["not co-storage with"] == 0.0
    assert ref["mean_recall"] == pytest.approx(1 / 58)
    strict = scene_graph_recall(gt, gt, mode="strict")
    assert strict["per_relation"] == {"not co-storage with": 1.0} and strict["mean_recall"] == 1.0


def test_unknown_labels_all_match_in_reference() -> None:
    gt = [graph(("spaceship", (20, 20), "over", "dock", (40, 20)))]
    pred = [graph(("ufo", (20, 20), "over", "dock", (40, 20)))]
    assert scene_graph_recall(gt, pred, mode="reference")["recall"] == 1.0  # both class id -1
    assert scene_graph_recall(gt, pred, mode="strict")["recall"] == 0.0


def test_fault_task5_first_object_box_stands_for_the_region() -> None:
    dock, car, far = rb(30, 40, 10, 10), rb(70, 60, 10, 10), rb(90, 10, 10, 10)
    wrong_dock = REGION_GT.replace(dock, far)
    wrong_car = REGION_GT.replace(car, far)
    recall = {}
    for mode in MODES:
        gt = parse_region_scene_graph(REGION_GT, mode=mode)
        for name, answer in (("wrong_dock", wrong_dock), ("wrong_car", wrong_car)):
            pred = parse_region_scene_graph(answer, mode=mode)
            recall[mode, name] = scene_graph_recall([gt], [pred], mode=mode)["recall"]
    # Reference: both triplets are scored on the dock's box (see test_region_scene_graph_layouts), so a wrong
    # dock fails both and a wrong car fails none.
    assert recall["reference", "wrong_dock"] == 0.0 and recall["reference", "wrong_car"] == 1.0
    assert recall["strict", "wrong_dock"] == 0.5 and recall["strict", "wrong_car"] == 0.5


def test_scene_graph_recall_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no images"):
        scene_graph_recall([], [])
    with pytest.raises(ValueError, match="one predicted graph per image"):
        scene_graph_recall([EMPTY], [])
    with pytest.raises(ValueError, match="could score no image"):
        scene_graph_recall([EMPTY], [EMPTY], mode="strict")


# ----------------------------------------------------------------------------------------------- relations


def test_relation_prf_golden() -> None:
    # {a, b} vs {a, x}: TP 1, FP 1, FN 1; {c} vs {}: FN 1 -> TP 1, FP 1, FN 2.
    # P = 1/2, R = 1/3, F1 = 2 * 1/6 / (5/6) = 2/5.
    result = relation_prf([["a", "b"], ["c"]], [["a", "x", "a"], []])
    assert result == {
        "precision": 0.5,
        "recall": pytest.approx(1 / 3),
        "f1": pytest.approx(0.4),
        "tp": 1,
        "fp": 1,
        "fn": 2,
        "questions": 2,
    }
    with pytest.raises(ValueError, match="no questions"):
        relation_prf([], [])


def test_fault_relation_reasoning_mismatches_dropped() -> None:
    gt = [
        RelationTriple("ship", "dock", ("over", "adjacent")),
        RelationTriple("car", "road", ("run along",)),
        RelationTriple("plane", "apron", ("parked on",)),
        None,  # a negative sample: skipped in both modes
    ]
    pred = [
        RelationTriple("ship", "dock", ("over",)),  # TP 1, FN 1
        RelationTriple("truck", "road", ("run along",)),  # wrong subject
        None,  # unparsable answer
        RelationTriple("x", "y", ("over",)),
    ]
    ref = relation_reasoning_prf(gt, pred, mode="reference")
    # Only the first question counts: P 1, R 1/2, F1 2/3.
    assert (ref["tp"], ref["fp"], ref["fn"], ref["questions"], ref["skipped"]) == (1, 0, 1, 1, 3)
    assert ref["f1"] == pytest.approx(2 / 3)
    strict = relation_reasoning_prf(gt, pred, mode="strict")
    # + wrong pair: FP 1, FN 1; + no answer: FN 1 -> TP 1, FP 1, FN 3: P 1/2, R 1/4, F1 = 2 * 1/8 / (3/4) = 1/3.
    assert (strict["tp"], strict["fp"], strict["fn"], strict["questions"], strict["skipped"]) == (1, 1, 3, 3, 1)
    assert strict["f1"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- scene classification and VQA

SINGLE = "Classify the scene. Answer in one word or a short phrase."
MULTI = "Which classes appear? Answer with all applicable classes separated by commas."


def test_scene_classification_golden() -> None:
    rows = [
        {"question_id": 1, "question": SINGLE, "answer": "Airport", "ground_truth": "airport"},
        {"question_id": 2, "question": SINGLE, "answer": "airport.", "ground_truth": "airport"},
        {"question_id": 3, "text": MULTI, "answer": "A, d", "ground_truth": "a, b, c"},
        {"question_id": 4, "text": MULTI, "answer": "e.", "ground_truth": "e"},
    ]
    ref = scene_classification_metrics(rows, mode="reference")
    assert ref["single_label"] == {"accuracy": 0.5, "correct": 1, "questions": 2}  # "airport." is wrong
    # {a, d} vs {a, b, c}: TP 1, FP 1, FN 2; {"e."} vs {e}: FP 1, FN 1 -> TP 1, FP 2, FN 3:
    # P 1/3, R 1/4, F1 = 2 * 1/12 / (7/12) = 2/7.
    multi = ref["multi_label"]
    assert (multi["tp"], multi["fp"], multi["fn"], multi["questions"]) == (1, 2, 3, 2)
    assert multi["f1"] == pytest.approx(2 / 7)
    strict = scene_classification_metrics(rows, mode="strict")
    assert strict["single_label"]["accuracy"] == 1.0
    # "e." normalised to e: TP 2, FP 1, FN 2 -> P 2/3, R 1/2, F1 = 2 * 1/3 / (7/6) = 4/7.
    assert strict["multi_label"]["f1"] == pytest.approx(4 / 7)


def test_scene_classification_question_without_suffix() -> None:
    rows = [
        {"question_id": 1, "question": SINGLE, "answer": "port", "ground_truth": "port"},
        {"question_id": 2, "question": "What scene is it?", "answer": "farm", "ground_truth": "farm"},
    ]
    # Published: the second row keeps the previous row's kind (single).
    assert scene_classification_metrics(rows, mode="reference")["single_label"]["questions"] == 2
    with pytest.raises(ValueError, match="row 1 .*question_id 2"):
        scene_classification_metrics(rows, mode="strict")
    with pytest.raises(ValueError, match="row 0"):
        scene_classification_metrics(rows[1:], mode="reference")  # published: NameError on the first row
    with pytest.raises(ValueError, match="no rows"):
        scene_classification_metrics([])
    only_single = scene_classification_metrics(rows[:1])
    assert only_single["multi_label"] is None


def test_fitrsfg_vqa_golden() -> None:
    rows = [
        {"question_id": 1, "category": "Count", "answer": "3", "ground_truth": "3"},
        {"question_id": 2, "category": "count", "answer": "Yes.", "ground_truth": "yes"},
        {"question_id": 3, "category": "presence", "answer": "No", "ground_truth": "no"},
    ]
    ref = fitrsfg_vqa_accuracy(rows, mode="reference")
    # Categories lower-cased: count [right, wrong ("Yes." != "yes")], presence [right] -> OA 2/3, AA 3/4.
    assert ref["OA"] == pytest.approx(2 / 3) and ref["AA"] == pytest.approx(0.75)
    assert ref["per_type"] == {"count": 0.5, "presence": 1.0}
    assert fitrsfg_vqa_accuracy(rows, mode="strict")["OA"] == 1.0
    with pytest.raises(ValueError, match="no rows"):
        fitrsfg_vqa_accuracy([])


# ---------------------------------------------------------------------------------- complex comprehension


def _rows() -> list[dict]:
    ship1, ship2 = rb(20, 20, 10, 5), rb(60, 60, 12, 6)
    t1 = f"There are 2 ships in the image: <rbox>({ship1}, {ship2})</rbox>"
    t2 = (
        "There are 2 relationships between tank and tank: "
        "tank <not co-storage with> tank, tank <co-storage with> tank"
    )
    t3 = "subject: ship, object: dock, relation: <rel>docked alongside with</rel>."
    t4 = f"There are 1 categories: <ref>boats</ref><rbox>({rb(40, 40, 10, 10)})</rbox>"
    t6 = (
        f"<ref>ship</ref><rbox>({rb(20, 20, 10, 10)})</rbox> <rel>docked alongside with</rel> "
        f"<ref>dock</ref><rbox>({rb(26, 20, 10, 10)})</rbox>. "
        f"There is a <ref>car</ref><rbox>({rb(80, 80, 8, 8)})</rbox>"
    )
    truths = {"task1": t1, "task2": t2, "task3": t3, "task4": t4, "task5": REGION_GT, "task6": t6}
    return [{"question_id": i, "category": task, "ground_truth": gt} for i, (task, gt) in enumerate(truths.items())]


def test_complex_comprehension_perfect_answers() -> None:
    rows = [{**row, "answer": row["ground_truth"]} for row in _rows()]
    rows.append({"question_id": 99, "category": "task1", "ground_truth": "There are 9 ships ...", "answer": "x"})
    rows.append({"question_id": 98, "category": "caption", "ground_truth": "a port", "answer": "a port"})
    for mode in MODES:
        result = complex_comprehension_metrics(rows, mode=mode)
        assert result["task1"]["map_11point"] == 1.0 and result["task1"]["map_all_point"] == 1.0
        assert result["task2"]["f1"] == 1.0 and result["task3"]["f1"] == 1.0
        assert result["task4"]["map_11point"] == 1.0
        assert result["task5"]["recall"] == 1.0
        assert result["task6"]["scene_graph"]["recall"] == 1.0 and result["task6"]["detection"]["map_11point"] == 1.0
        assert result["rows"]["task1"] == {"seen": 2, "scored": 1}  # the truncated "..." row is not scored


def test_fault_task6_negative_rows_with_invented_boxes() -> None:
    car = rb(80, 80, 8, 8)
    negative = {
        "question_id": 7,
        "category": "task6",
        "ground_truth": "Sorry, there is no such scene in the image.",
        "answer": f"There is a <ref>car</ref><rbox>({car})</rbox>",
    }
    positive = {
        "question_id": 8,
        "category": "task6",
        "ground_truth": f"There is a <ref>car</ref><rbox>({car})</rbox>",
    }
    rows = [negative, {**positive, "answer": positive["ground_truth"]}]
    ref = complex_comprehension_metrics(rows, mode="reference")["task6"]["detection"]
    assert ref["map_11point"] == 1.0 and ref["images"] == 1  # the negative row never reaches the mAP
    # Strict: car ranked FP (negative row) then TP -> precision 0, 1/2 at recall 0, 1 -> 0.5.
    strict = complex_comprehension_metrics(rows, mode="strict")["task6"]["detection"]
    assert strict["map_11point"] == pytest.approx(0.5) and strict["images"] == 2


@pytest.mark.parametrize(
    "answer", ["", None, "I don't know.", "{<a><b><c><d>|<e>}", "<rbox>({<1><2>})</rbox>. it is"]
)
@pytest.mark.parametrize("mode", MODES)
def test_malformed_answers_score_as_wrong(answer: str | None, mode: str) -> None:
    rows = [{**row, "answer": answer} for row in _rows()]
    result = complex_comprehension_metrics(rows, mode=mode)
    assert result["task1"]["map_11point"] == 0.0 and result["task4"]["map_11point"] == 0.0
    assert result["task2"]["recall"] == 0.0 and result["task6"]["detection"]["map_11point"] == 0.0
    if mode == "reference":
        # Published: every answer is empty, so scene-graph recall has no image left (it would print NaN).
        assert "undefined" in result["task5"] and "undefined" in result["task6"]["scene_graph"]
        assert result["task3"]["questions"] == 0  # an unparsable answer is dropped
    else:
        assert result["task5"]["recall"] == 0.0 and result["task6"]["scene_graph"]["recall"] == 0.0
        assert result["task3"]["recall"] == 0.0 and result["task3"]["questions"] == 1


def test_complex_comprehension_empty_input() -> None:
    with pytest.raises(ValueError, match="no rows"):
        complex_comprehension_metrics([])
    with pytest.raises(ValueError, match="has no 'answer' field"):
        complex_comprehension_metrics([{"question_id": 1, "category": "task2", "ground_truth": "<over>"}])
    with pytest.raises(ValueError, match="unknown mode"):
        complex_comprehension_metrics(_rows(), mode="lenient")  # type: ignore[arg-type]
