"""Tests for the box conventions: geochat text round trip and corner polygons."""

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
