"""Tests for the box conventions: geochat, fitrs and thousand text round trips, and corner polygons."""

from __future__ import annotations

import math

import pytest

from rsvlm.data.boxes import Box, BoxConvention, format_boxes, parse_boxes

GEOCHAT = BoxConvention.geochat


def _same_points(a: list[tuple[float, float]], b: list[tuple[float, float]], tol: float = 1e-9) -> bool:
    """Whether two corner lists are the same set of points (order ignored) within ``tol``."""
    remaining = list(b)
    for x, y in a:
        for i, (u, v) in enumerate(remaining):
            if math.isclose(x, u, abs_tol=tol) and math.isclose(y, v, abs_tol=tol):
                del remaining[i]
                break
        else:
            return False
    return not remaining


def test_format_geochat_exact_text() -> None:
    box = Box.from_corners(0.10, 0.20, 0.30, 0.50, 45.0)
    assert format_boxes([box], GEOCHAT) == "{<10><20><30><50>|<45>}"


def test_geochat_round_trip_within_rounding() -> None:
    boxes = [Box(0.123, 0.456, 0.2, 0.1, 30.0), Box(0.8, 0.25, 0.333, 0.05, -12.4), Box(0.5, 0.5, 1.0, 1.0)]
    parsed = parse_boxes(format_boxes(boxes, GEOCHAT), GEOCHAT)
    assert len(parsed) == len(boxes)
    for original, back in zip(boxes, parsed):
        # corners are written to the nearest 1/100: each corner moves by <= 0.005, so the centre by
        # <= 0.005 and a side by <= 0.01; the angle is written to the nearest degree.
        assert back.cx == pytest.approx(original.cx, abs=0.005 + 1e-9)
        assert back.cy == pytest.approx(original.cy, abs=0.005 + 1e-9)
        assert back.w == pytest.approx(original.w, abs=0.01 + 1e-9)
        assert back.h == pytest.approx(original.h, abs=0.01 + 1e-9)
        assert back.angle == round(original.angle)


def test_parse_tolerates_spaces_decimals_negative_angle_and_text() -> None:
    text = "Sure, the plane is at { <10.5> <20><30 > <50>| <-30> } in the image."
    assert parse_boxes(text, GEOCHAT) == [Box.from_corners(0.105, 0.20, 0.30, 0.50, -30.0)]


def test_parse_multiple_boxes_in_order() -> None:
    text = "two ships: {<0><0><10><10>|<0>} and {<50><60><70><90>|<15>}"
    assert parse_boxes(text, GEOCHAT) == [
        Box.from_corners(0.0, 0.0, 0.10, 0.10, 0.0),
        Box.from_corners(0.50, 0.60, 0.70, 0.90, 15.0),
    ]


def test_parse_skips_malformed_boxes() -> None:
    text = (
        "{<10><20><30>|<0>} "  # three numbers
        "{<a><20><30><40>|<0>} "  # not a number
        "{<10><20><30><40><0>} "  # no '|'
        "<10><20><30><40>|<0>} "  # no opening brace
        "{<1><2><3><4>|<5>}"  # the only good one
    )
    assert parse_boxes(text, GEOCHAT) == [Box.from_corners(0.01, 0.02, 0.03, 0.04, 5.0)]
    assert parse_boxes("no boxes here", GEOCHAT) == []


def test_polygon_axis_aligned() -> None:
    corners = Box(0.5, 0.5, 0.4, 0.2).polygon()
    assert len(corners) == 4
    assert _same_points(corners, [(0.3, 0.4), (0.7, 0.4), (0.7, 0.6), (0.3, 0.6)])


@pytest.mark.parametrize("angle", [90.0, -90.0, 270.0])
def test_polygon_quarter_turn_swaps_sides(angle: float) -> None:
    turned = Box(10.0, 20.0, 8.0, 2.0, angle).polygon()
    assert _same_points(turned, Box(10.0, 20.0, 2.0, 8.0).polygon())
    assert not _same_points(turned, Box(10.0, 20.0, 8.0, 2.0).polygon())


# ---------------------------------------------------------------------------------------------------- fitrs

FITRS = BoxConvention.fitrs
THOUSAND = BoxConvention.thousand


def _oc_polygon(cx: float, cy: float, w: float, h: float, theta_degrees: float) -> list[tuple[float, float]]:
    """Corners of a FIT-RS / mmrotate ``oc`` box as its evaluation code draws them: in image axes (y down),
    the w side points along (cos θ, sin θ) and the h side along (−sin θ, cos θ)."""
    t = math.radians(theta_degrees)
    wx, wy = w / 2 * math.cos(t), w / 2 * math.sin(t)
    hx, hy = -h / 2 * math.sin(t), h / 2 * math.cos(t)
    return [(cx + sw * wx + sh * hx, cy + sw * wy + sh * hy) for sw, sh in ((-1, -1), (1, -1), (1, 1), (-1, 1))]


def test_format_fitrs_exact_text_one_and_many() -> None:
    # Box.angle is counter-clockwise on screen; FIT-RS θ clockwise: -30 here is θ = 30 there.
    ships = [Box(0.20, 0.20, 0.10, 0.05, -30.0), Box(0.60, 0.60, 0.12, 0.06, -45.0)]
    assert format_boxes(ships, FITRS) == (
        "<rbox>({<20.00><20.00><10.00><5.00>|<30>}, {<60.00><60.00><12.00><6.00>|<45>})</rbox>")
    assert format_boxes(ships[:1], FITRS) == "<rbox>({<20.00><20.00><10.00><5.00>|<30>})</rbox>"
    assert format_boxes([], FITRS) == ""
    assert format_boxes([Box(0.123456, 0.5, 0.00004, 0.02, -90.0)], FITRS) == (
        "<rbox>({<12.35><50.00><0.00><2.00>|<90>})</rbox>")


def test_parse_fitrs_sample_answer_matches_reference_polygons() -> None:
    text = ("There are 2 ships in the image: "
            "<rbox>({<20.00><20.00><10.00><5.00>|<30>}, {<60.00><60.00><12.00><6.00>|<45>})</rbox>")
    boxes = parse_boxes(text, FITRS)
    assert boxes == [Box(0.20, 0.20, 0.10, 0.05, -30.0), Box(0.60, 0.60, 0.12, 0.06, -45.0)]
    for box, (cx, cy, w, h, theta) in zip(boxes, [(20, 20, 10, 5, 30), (60, 60, 12, 6, 45)]):
        assert _same_points(box.scaled(100, 100).polygon(), _oc_polygon(cx, cy, w, h, theta), tol=1e-9)


def test_parse_fitrs_inside_ref_and_rel_contexts() -> None:
    text = ("The <ref>small ship</ref><rbox>({<10.50><20.25><4.00><2.00>|<90>})</rbox> on the top part of the "
            "image. It is <rel>docked alongside with</rel> the <ref>dock</ref><rbox>({ <30> <40> <8.5> <6> | <1> },"
            " {<0.><0.><0.><0.>|<0>})</rbox>. {<1><2><3>|<4>} is malformed.")
    assert parse_boxes(text, FITRS) == [
        Box(0.105, 0.2025, 0.04, 0.02, -90.0),
        Box(0.30, 0.40, 0.085, 0.06, -1.0),
        Box(0.0, 0.0, 0.0, 0.0, 0.0),
    ]
    assert parse_boxes("no boxes, <rel>over</rel>", FITRS) == []


@pytest.mark.parametrize("angle", [0.0, -30.0, 30.0, -90.0, 90.0, 120.0, -135.0, 180.0, 200.0, -300.0, 359.0, -44.6])
def test_fitrs_angle_normalised_into_0_90_with_same_polygon(angle: float) -> None:
    box = Box(0.40, 0.55, 0.20, 0.06, angle)
    (back,) = parse_boxes(format_boxes([box], FITRS), FITRS)
    theta = -back.angle
    assert 0 < theta <= 90 and theta == int(theta)
    # The written angle is rounded to a degree: compare with the box at the rounded angle.
    assert _same_points(back.polygon(), Box(0.40, 0.55, 0.20, 0.06, round(angle)).polygon(), tol=1e-9)


def test_fitrs_axis_aligned_box_is_written_at_90_degrees_with_sides_swapped() -> None:
    box = Box(0.5, 0.5, 0.4, 0.2)
    assert format_boxes([box], FITRS) == "<rbox>({<50.00><50.00><20.00><40.00>|<90>})</rbox>"
    assert _same_points(parse_boxes(format_boxes([box], FITRS), FITRS)[0].polygon(), box.polygon(), tol=1e-9)


def test_fitrs_round_trip_within_rounding() -> None:
    boxes = [Box(0.123456, 0.654321, 0.0789, 0.0345, -17.0), Box(0.9, 0.1, 0.05, 0.3, -89.0)]
    parsed = parse_boxes(format_boxes(boxes, FITRS), FITRS)
    for original, back in zip(boxes, parsed, strict=True):
        # centre and sides are written to the nearest 1/10000 of the tile.
        for a, b in ((original.cx, back.cx), (original.cy, back.cy), (original.w, back.w), (original.h, back.h)):
            assert b == pytest.approx(a, abs=0.00005 + 1e-12)
        assert back.angle == original.angle


# ---------------------------------------------------------------------------------------------------- thousand

def test_format_thousand_exact_text() -> None:
    assert format_boxes([Box.from_corners(0.1, 0.2, 0.3, 0.5)], THOUSAND) == "[[100, 200, 300, 500]]"
    assert format_boxes([Box.from_corners(0.1, 0.2, 0.3, 0.5), Box.from_corners(0.0, 0.0, 1.2, 0.0015)],
                        THOUSAND) == "[[100, 200, 300, 500], [0, 0, 1000, 2]]"
    assert format_boxes([], THOUSAND) == ""


def test_format_thousand_rotated_box_is_enclosed() -> None:
    # a 0.2 × 0.1 box turned a quarter is 0.1 wide and 0.2 high; at 45° its enclosing square is exact too.
    assert format_boxes([Box(0.5, 0.5, 0.2, 0.1, 90.0)], THOUSAND) == "[[450, 400, 550, 600]]"
    half_diag = round(0.15 / math.sqrt(2) * 1000)
    assert format_boxes([Box(0.5, 0.5, 0.2, 0.1, 45.0)], THOUSAND) == (
        f"[[{500 - half_diag}, {500 - half_diag}, {500 + half_diag}, {500 + half_diag}]]")


def test_parse_thousand_lists_repeats_and_malformed() -> None:
    text = ("<ref>the plane</ref><box>[[100,200, 300 ,500]]</box> and [[0, 0, 10, 10], [500.5, 600, 700, 900]] "
            "then [[1, 2, 3]] [[a, 2, 3, 4], [1, 1, 2, 2]] [4, 4, 8, 8] [[9, 9, 9, 9]]")
    assert parse_boxes(text, THOUSAND) == [
        Box.from_corners(0.1, 0.2, 0.3, 0.5),
        Box.from_corners(0.0, 0.0, 0.01, 0.01),
        Box.from_corners(0.5005, 0.6, 0.7, 0.9),
        Box.from_corners(0.001, 0.001, 0.002, 0.002),
        Box.from_corners(0.009, 0.009, 0.009, 0.009),
    ]
    assert parse_boxes("no boxes [here]", THOUSAND) == []


def test_thousand_round_trip_within_rounding() -> None:
    boxes = [Box.from_corners(0.1234, 0.5678, 0.4321, 0.8765), Box(0.5, 0.5, 1.0, 1.0)]
    for original, back in zip(boxes, parse_boxes(format_boxes(boxes, THOUSAND), THOUSAND), strict=True):
        assert back.cx == pytest.approx(original.cx, abs=0.0005 + 1e-9)
        assert back.w == pytest.approx(original.w, abs=0.001 + 1e-9)
        assert back.angle == 0.0
