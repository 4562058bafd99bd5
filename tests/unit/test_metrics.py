"""Golden-value tests for the pure metric functions (values computed by hand in the comments)."""

from __future__ import annotations

import math

import pytest

from rsvlm.data.boxes import Box
from rsvlm.eval.metrics import (
    box_iou,
    choice_accuracy,
    circular_eval,
    extract_choice,
    box_matching_accuracy,
    grounding_accuracy,
    normalize_answer,
    vqa_accuracy,
)

# --------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes.", "yes"),
        (" YES ", "yes"),
        ("yes", "yes"),
        ('"No"', "no"),
        ("'no'.", "no"),
        ('"Yes."', "yes"),
        ("\u201cRural\u201d", "rural"),
        ("Two", "2"),
        ("zero", "0"),
        ("twenty.", "20"),
        ("  there  are\tthree ships. ", "there are 3 ships"),
        ("2.5", "2.5"),  # a decimal point is not a trailing period
        ("twentyone", "twentyone"),  # only whole words are numbers
        ("between 10 and 100", "between 10 and 100"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("b", "B"),  # the whole answer is a letter: any case
        (" C ", "C"),
        ("The answer is D.", "D"),
        ("(E) harbour", "E"),
        ("answer: a", None),  # lower-case letters inside text are not options
        ("none of them", None),
        ("A ship is moored next to the pier, so C", "A"),  # the published rule's quirk: article read as A
    ],
)
def test_extract_choice_reference_rule(answer: str, expected: str | None) -> None:
    assert extract_choice(answer) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("A ship is moored next to the pier, so C", "C"),  # leading article skipped
        ("A ship is moored next to the pier", None),
        ("A", "A"),  # a bare letter is still a letter
        ("A. The harbour", "A"),  # "A." is an option, not an article before a lower-case word
        ("A Boeing is parked", "A"),  # not followed by a lower-case word: read as the option
        ("It is A ship", "A"),  # only a *leading* article is skipped
    ],
)
def test_extract_choice_strict(answer: str, expected: str | None) -> None:
    assert extract_choice(answer, strict=True) == expected


def test_extract_choice_only_listed_options() -> None:
    assert extract_choice("E", options="ABCD") is None
    assert extract_choice("maybe E or B", options="ABCD") == "B"


# ------------------------------------------------------------------------------------------------- vqa


def test_vqa_accuracy_oa_differs_from_aa() -> None:
    rows = [
        # presence: 3 of 4 right -> 0.75
        {"category": "presence", "answer": "Yes.", "ground_truth": "yes"},
        {"category": "presence", "answer": "NO", "ground_truth": "no"},
        {"category": "presence", "answer": '"yes"', "ground_truth": "yes"},
        {"category": "presence", "answer": "no", "ground_truth": "yes"},
        # count: 1 of 2 right -> 0.5 (ground truths may be ints in the source JSON)
        {"category": "count", "answer": "Two", "ground_truth": 2},
        {"category": "count", "answer": "3", "ground_truth": "4"},
    ]
    result = vqa_accuracy(rows)
    # OA = 4 right / 6 = 2/3; AA = (0.75 + 0.5) / 2 = 0.625
    assert result["OA"] == pytest.approx(2 / 3)
    assert result["AA"] == pytest.approx(0.625)
    assert result["per_type"] == {"count": pytest.approx(0.5), "presence": pytest.approx(0.75)}
    assert result["questions"] == 6


def test_vqa_accuracy_missing_answer_is_wrong() -> None:
    result = vqa_accuracy([{"category": "c", "answer": None, "ground_truth": "yes"}])
    assert result["OA"] == 0.0


def test_vqa_accuracy_rejects_empty_and_malformed_rows() -> None:
    with pytest.raises(ValueError, match="no rows"):
        vqa_accuracy([])
    with pytest.raises(ValueError, match="row 1 has no 'ground_truth'"):
        vqa_accuracy([{"category": "c", "answer": "a", "ground_truth": "a"}, {"category": "c", "answer": "a"}])


def test_choice_accuracy_reference_vs_strict() -> None:
    rows = [
        {"category": "scene", "answer": "B", "ground_truth": "B"},
        {"category": "scene", "answer": "A ship is moored, so C", "ground_truth": "C"},
        {"category": "count", "answer": "The answer is (d)", "ground_truth": "D"},  # lower-case d: no option
    ]
    reference = choice_accuracy(rows)
    # reference: scene 1/2 (the article reads as A), count 0/1 -> OA 1/3, AA (0.5 + 0) / 2 = 0.25
    assert reference["OA"] == pytest.approx(1 / 3)
    assert reference["AA"] == pytest.approx(0.25)
    assert reference["per_type"] == {"count": 0.0, "scene": 0.5}
    strict = choice_accuracy(rows, strict=True)
    # strict: scene 2/2, count 0/1 -> OA 2/3, AA (1 + 0) / 2 = 0.5
    assert strict["OA"] == pytest.approx(2 / 3)
    assert strict["AA"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        choice_accuracy([])


def test_circular_eval_needs_every_rotation_right() -> None:
    rows = []
    # q1 (land-use): all four rotations right -> right
    rows += [{"question_id": 1, "category": "land-use", "answer": g, "ground_truth": g} for g in "ABCD"]
    # q2 (land-use): three right, one wrong -> the whole question is wrong
    rows += [{"question_id": 2, "category": "land-use", "answer": g, "ground_truth": g} for g in "ABC"]
    rows += [{"question_id": 2, "category": "land-use", "answer": "A", "ground_truth": "D"}]
    # id 1 again but in another category: a different question; both rotations right -> right
    rows += [{"question_id": 1, "category": "count", "answer": f"({g})", "ground_truth": g} for g in "AB"]
    result = circular_eval(rows)
    # 3 questions, 2 right -> 2/3 overall; land-use 1/2, count 1/1 (per-row accuracy would be 9/10)
    assert result["questions"] == 3
    assert result["overall"] == pytest.approx(2 / 3)
    assert result["per_category"] == {"count": 1.0, "land-use": 0.5}
    with pytest.raises(ValueError):
        circular_eval([])


def test_circular_eval_reference_reads_the_article_a_as_an_option_strict_does_not() -> None:
    rows = [{"question_id": 7, "category": "object", "answer": "A ship is moored at the pier", "ground_truth": "A"},
            {"question_id": 7, "category": "object", "answer": "B", "ground_truth": "B"}]
    assert circular_eval(rows, "reference")["overall"] == 1.0
    assert circular_eval(rows, "strict")["overall"] == 0.0
    with pytest.raises(ValueError, match="mode"):
        circular_eval(rows, "lenient")


# -------------------------------------------------------------------------------------------- geometry


def test_box_iou_identical_and_disjoint() -> None:
    box = Box(10.0, 20.0, 8.0, 4.0)
    assert box_iou(box, box) == 1.0
    assert box_iou(box, Box(30.0, 20.0, 8.0, 4.0)) == 0.0
    assert box_iou(Box(10.0, 20.0, 8.0, 4.0, 30.0), Box(40.0, 20.0, 8.0, 4.0, 30.0)) == 0.0


def test_box_iou_half_overlap_axis_aligned() -> None:
    # x 0..2 vs x 1..3, both y 0..2: intersection 1*2 = 2, union 4 + 4 - 2 = 6 -> 1/3 exactly
    assert box_iou(Box(1.0, 1.0, 2.0, 2.0), Box(2.0, 1.0, 2.0, 2.0)) == 1 / 3


def test_box_iou_degenerate_box_is_zero() -> None:
    flat = Box(5.0, 5.0, 0.0, 2.0)
    assert box_iou(flat, flat) == 0.0
    assert box_iou(flat, Box(5.0, 5.0, 4.0, 4.0)) == 0.0


def test_box_iou_rotated_square_against_itself() -> None:
    diamond = Box(50.0, 50.0, 20.0, 20.0, 45.0)
    assert box_iou(diamond, diamond) == pytest.approx(1.0, abs=1e-12)


def test_box_iou_rotated_square_against_axis_aligned_square() -> None:
    # Side 2 about the origin: the 45° square is |x| + |y| <= sqrt(2); the intersection is the regular
    # octagon of inradius 1, area 8 (sqrt(2) - 1). IoU = 8(sqrt2 - 1) / (2*4 - 8(sqrt2 - 1))
    # = (sqrt2 - 1) / (2 - sqrt2) = 1 / sqrt(2) ≈ 0.70711.
    square = Box(0.0, 0.0, 2.0, 2.0)
    diamond = Box(0.0, 0.0, 2.0, 2.0, 45.0)
    assert box_iou(square, diamond) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert box_iou(diamond, square) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_box_iou_ignores_corner_winding() -> None:
    # A negative width winds the corner polygon the other way round; the clipper must not care.
    square = Box(0.0, 0.0, 2.0, 2.0)
    assert box_iou(square, Box(0.0, 0.0, -2.0, 2.0, 45.0)) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert box_iou(Box(0.0, 0.0, -2.0, 2.0, 45.0), Box(0.0, 0.0, 2.0, 2.0, 30.0)) == pytest.approx(
        box_iou(Box(0.0, 0.0, 2.0, 2.0, 45.0), Box(0.0, 0.0, 2.0, 2.0, 30.0)), abs=1e-12
    )


def test_box_iou_rotated_partial_overlap_off_centre() -> None:
    # The diamond |x| + |y| <= 1 (side sqrt2, area 2) against the box x 0..2, y -1..1 (area 4):
    # the intersection is the diamond's right half, area 1 -> IoU = 1 / (2 + 4 - 1) = 1/5.
    diamond = Box(0.0, 0.0, math.sqrt(2), math.sqrt(2), 45.0)
    assert box_iou(diamond, Box(1.0, 0.0, 2.0, 2.0)) == pytest.approx(0.2, abs=1e-12)


def test_box_iou_quarter_turn_swaps_sides() -> None:
    assert box_iou(Box(5.0, 5.0, 4.0, 2.0, 90.0), Box(5.0, 5.0, 2.0, 4.0)) == 1.0
    assert box_iou(Box(5.0, 5.0, 4.0, 2.0, -270.0), Box(5.0, 5.0, 2.0, 4.0)) == 1.0
    assert box_iou(Box(5.0, 5.0, 4.0, 2.0, 180.0), Box(5.0, 5.0, 4.0, 2.0)) == 1.0


@pytest.mark.parametrize("turn", [17.0, 30.0, 45.0, 90.0, -123.0])
def test_box_iou_rotation_invariance(turn: float) -> None:
    # A 40x20 and a 20x40 box on the same centre: intersection 20*20 = 400, union 800 + 800 - 400 = 1200
    # -> 1/3. Turning both by the same angle about their common centre keeps it.
    a, b = Box(50.0, 50.0, 40.0, 20.0), Box(50.0, 50.0, 20.0, 40.0)
    assert box_iou(a, b) == 1 / 3
    turned_a = Box(a.cx, a.cy, a.w, a.h, a.angle + turn)
    turned_b = Box(b.cx, b.cy, b.w, b.h, b.angle + turn)
    assert box_iou(turned_a, turned_b) == pytest.approx(1 / 3, abs=1e-12)
    # and for an already rotated, unequal pair
    c, d = Box(50.0, 50.0, 40.0, 20.0, 10.0), Box(50.0, 50.0, 30.0, 25.0, 35.0)
    expected = box_iou(c, d)
    assert 0.0 < expected < 1.0
    turned = box_iou(Box(50.0, 50.0, 40.0, 20.0, 10.0 + turn), Box(50.0, 50.0, 30.0, 25.0, 35.0 + turn))
    assert turned == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------- grounding


def _strip(x1: float, x2: float) -> Box:
    """A box spanning x1..x2 horizontally and 0..10 vertically (pixels)."""
    return Box.from_corners(x1, 0.0, x2, 10.0)


def test_grounding_one_prediction_cannot_match_two_ground_truths() -> None:
    # GTs x 0..10 and x 2..12; the single prediction equals the first (IoU 1) and overlaps the second
    # by 8 of 12 (IoU 2/3 >= 0.5). One-to-one matching: 1 hit of 2 GT boxes, not 2.
    result = box_matching_accuracy([[_strip(0, 10)]], [[_strip(0, 10), _strip(2, 12)]])
    assert result["hits"] == 1
    assert result["ground_truth_boxes"] == 2
    assert result["accuracy"] == 0.5
    # best IoU per GT: 1 and 2/3 -> mean 5/6
    assert result["mean_best_iou"] == pytest.approx(5 / 6)


def test_grounding_greedy_takes_highest_iou_first() -> None:
    # G1 = x 0..10, G2 = x 3..13; P1 = x 2..12 (IoU 8/12 with G1, 9/11 with G2), P2 = x 0..10 (IoU 1
    # with G1, 7/13 with G2). Highest first: (P2, G1) = 1, then (P1, G2) = 9/11 -> 2 hits.
    # Matching P1 to its first acceptable GT (G1) would leave P2 with G2 at 7/13 - still a hit at 0.5 -
    # but at threshold 0.6 only highest-first matching gets both.
    preds = [[_strip(2, 12), _strip(0, 10)]]
    gts = [[_strip(0, 10), _strip(3, 13)]]
    assert box_matching_accuracy(preds, gts, iou_threshold=0.6)["hits"] == 2
    result = box_matching_accuracy(preds, gts)
    assert result["hits"] == 2
    assert result["mean_best_iou"] == pytest.approx((1 + 9 / 11) / 2)


def test_grounding_threshold_is_inclusive() -> None:
    # x 0..10 against x 0..20 (same height): intersection 100, union 200 -> IoU exactly 0.5 -> a hit.
    preds, gts = [[_strip(0, 20)]], [[_strip(0, 10)]]
    assert box_matching_accuracy(preds, gts)["hits"] == 1
    assert box_matching_accuracy(preds, gts, iou_threshold=0.5 + 1e-9)["hits"] == 0


def test_grounding_accuracy_reads_answer_rows_in_each_convention() -> None:
    from rsvlm.data.boxes import BoxConvention

    rows = [{"answer": "[[100,100,300,300]]", "ground_truth": "[[100,100,300,300]]"},  # IoU 1
            {"answer": "[[0,0,200,100]]", "ground_truth": "[[100,0,300,100]]"},  # IoU 1/3
            {"answer": "no box here", "ground_truth": "[[0,0,100,100]]"}]
    result = grounding_accuracy(rows, BoxConvention.thousand, iou_threshold=0.3)
    assert (result["hits"], result["ground_truth_boxes"]) == (2, 3)
    assert grounding_accuracy(rows, BoxConvention.thousand)["accuracy"] == pytest.approx(1 / 3)
    geochat = [{"answer": "{<10><10><50><50>|<0>}", "ground_truth": "{<10><10><50><50>|<0>}"}]
    assert grounding_accuracy(geochat, BoxConvention.geochat)["accuracy"] == 1.0


def test_grounding_accuracy_over_samples() -> None:
    # sample 1: exact hit (1/1); sample 2: no prediction (0/2); sample 3: a miss at IoU 1/3 (0/1)
    preds = [[_strip(0, 10)], [], [_strip(5, 15)]]
    gts = [[_strip(0, 10)], [_strip(0, 10), _strip(20, 30)], [_strip(0, 10)]]
    result = box_matching_accuracy(preds, gts)
    assert result == {
        "accuracy": 0.25,
        "hits": 1,
        "ground_truth_boxes": 4,
        "mean_best_iou": pytest.approx((1 + 0 + 0 + 1 / 3) / 4),
    }


def test_grounding_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match=r"3 prediction lists and 2 ground-truth lists"):
        box_matching_accuracy([[], [], []], [[], []])
    with pytest.raises(ValueError, match="no ground-truth boxes"):
        box_matching_accuracy([[_strip(0, 10)]], [[]])
