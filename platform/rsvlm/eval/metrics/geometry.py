"""IoU of possibly rotated boxes, by exact convex-polygon intersection.

Both boxes are turned into their corner polygons (:meth:`Box.polygon`); one is clipped by the other with
Sutherland–Hodgman (exact for convex clip polygons, which rectangles are) and the areas come from the
shoelace formula. Pure Python: grounding benchmarks score a few boxes per answer, so no vectorisation needed.

Units: take rotated IoU in **pixels** (``box.scaled(width, height)``). A box stored in fractions of a
non-square image and rotated in fraction space is not the rectangle the annotator drew, so its IoU is
wrong; for axis-aligned boxes IoU is invariant to per-axis scaling and fractions are fine.
"""

from __future__ import annotations

from rsvlm.data.boxes import Box

Point = tuple[float, float]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes in the same units (pixels if either is rotated).

    Exact (no float noise from ``cos``/``sin``) when both boxes are axis-aligned, including angles that
    are multiples of 90°; otherwise exact up to float rounding. A degenerate (zero-area) box gives 0.0.
    """
    area_a, area_b = abs(a.w * a.h), abs(b.w * b.h)
    if area_a == 0 or area_b == 0:
        return 0.0
    aligned_a, aligned_b = _axis_aligned(a), _axis_aligned(b)
    if aligned_a is not None and aligned_b is not None:
        inter = _interval_overlap(aligned_a[0], aligned_b[0]) * _interval_overlap(aligned_a[1], aligned_b[1])
    else:
        inter = abs(_signed_area(_clip(_ccw(a.polygon()), _ccw(b.polygon()))))
    union = area_a + area_b - inter
    # Rounding in the clipper can push inter a hair past min(area_a, area_b); keep the result in [0, 1].
    return min(max(inter / union, 0.0), 1.0) if union > 0 else 0.0


def _axis_aligned(box: Box) -> tuple[tuple[float, float], tuple[float, float]] | None:
    # Multiples of 180° map a rectangle onto itself and odd multiples of 90° swap its sides; handling them
    # here avoids cos(90°) = 6e-17 noise and keeps the common axis-aligned case exact.
    quarter_turns, remainder = divmod(box.angle, 90.0)
    if remainder != 0:
        return None
    w, h = (abs(box.h), abs(box.w)) if int(quarter_turns) % 2 else (abs(box.w), abs(box.h))
    return (box.cx - w / 2, box.cx + w / 2), (box.cy - h / 2, box.cy + h / 2)


def _interval_overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _signed_area(polygon: list[Point]) -> float:
    """Shoelace formula: positive for counter-clockwise vertices in maths axes (y up)."""
    total = 0.0
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
        total += x1 * y2 - x2 * y1
    return total / 2


def _ccw(polygon: list[Point]) -> list[Point]:
    # The clipper's inside test assumes one fixed orientation; whichever way Box.polygon winds (and a
    # negative width or height flips it), normalise here rather than rely on it.
    return polygon if _signed_area(polygon) >= 0 else polygon[::-1]


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _clip(subject: list[Point], clip: list[Point]) -> list[Point]:
    """Sutherland–Hodgman: the part of ``subject`` inside convex ``clip`` (both counter-clockwise)."""
    output = subject
    for edge_start, edge_end in zip(clip, clip[1:] + clip[:1]):
        if not output:
            break
        points, output = output, []
        for current, following in zip(points, points[1:] + points[:1]):
            current_in = _cross(edge_start, edge_end, current) >= 0
            following_in = _cross(edge_start, edge_end, following) >= 0
            if current_in:
                output.append(current)
            if current_in != following_in:
                output.append(_line_intersection(current, following, edge_start, edge_end))
    return output


def _line_intersection(p1: Point, p2: Point, q1: Point, q2: Point) -> Point:
    """Where segment p1–p2 crosses the infinite line through q1–q2 (called only when it does)."""
    d1 = _cross(q1, q2, p1)
    d2 = _cross(q1, q2, p2)
    t = d1 / (d1 - d2)
    return (p1[0] + t * (p2[0] - p1[0]), p1[1] + t * (p2[1] - p1[1]))
