"""Random scene layouts: maybe a water band, 0–2 roads and non-overlapping objects, placed by exact geometry
tests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional, Sequence

import numpy as np

from rsvlm.data.boxes import Box
from rsvlm.data.synthetic.categories import CATEGORIES, MAX_COUNT
from rsvlm.data.synthetic.scene import Rect, Road, Scene, SceneObject

# Probability of 0, 1, 2, 3, 4 instances of a category. P(0) ≈ 0.5 keeps each category present in about half
# the scenes, so a blind model cannot answer presence questions from the category name alone.
_COUNT_P = (0.5, 0.3, 0.1, 0.06, 0.04)
# Ships only exist on water, so water scenes get more of them to keep ships present in about half the scenes.
_SHIP_COUNT_P = (0.12, 0.38, 0.25, 0.15, 0.10)
_WATER_P = 0.6
_ROADS_P = (0.3, 0.5, 0.2)

# Size ranges as fractions of the image: (length/diameter range, aspect range = h / w).
# Chosen so that after downscaling 128 → 64 px the smallest object (a vehicle) is still ~6 × 3 px.
_SIZES = MappingProxyType({
    "storage tank": ((0.12, 0.17), (1.0, 1.0)),
    "ship": ((0.20, 0.28), (0.30, 0.38)),
    "airplane": ((0.18, 0.24), (0.90, 1.10)),
    "vehicle": ((0.09, 0.11), (0.50, 0.60)),
    "tennis court": ((0.24, 0.30), (0.48, 0.55)),
})
# Large objects first: they need the most free room, small ones fill the gaps.
_PLACEMENT_ORDER = ("tennis court", "airplane", "ship", "storage tank", "vehicle")
_PLACEMENT_TRIES = 60
_EDGE_MARGIN = 0.02  # objects keep this far from the image border (and ships from the shore)
_GAP = 0.02  # minimum free space between two objects


def _q(value: float) -> float:
    # Quantize stored geometry so scenes.json holds exactly the numbers every answer was derived from.
    return round(float(value), 4)


def _project(points: Sequence[tuple[float, float]], ax: float, ay: float) -> tuple[float, float]:
    values = [x * ax + y * ay for x, y in points]
    return min(values), max(values)


def _overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> bool:
    """Whether two convex polygons intersect (separating axis theorem; touching counts as overlapping)."""
    for poly in (a, b):
        for i in range(len(poly)):
            (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % len(poly)]
            ax, ay = y1 - y2, x2 - x1  # edge normal
            lo_a, hi_a = _project(a, ax, ay)
            lo_b, hi_b = _project(b, ax, ay)
            if hi_a < lo_b or hi_b < lo_a:
                return False
    return True


def _rects_meet(a: Rect, b: Rect) -> bool:
    return a.x1 <= b.x2 and b.x1 <= a.x2 and a.y1 <= b.y2 and b.y1 <= a.y2


def _grown(box: Box, margin: float) -> Box:
    return Box(box.cx, box.cy, box.w + 2 * margin, box.h + 2 * margin, box.angle)


def generate_scene(rng: np.random.Generator, image_id: str, size: int, object_scale: float = 1.0) -> Scene:
    """A random scene layout: maybe a water band, 0–2 roads, and non-overlapping objects (0–4 per category).

    ``object_scale`` multiplies every object size range (1 = ``_SIZES``); larger objects crowd the scene, so
    more of them find no room and are left out, which the ground truth records as it does any other.
    """
    water = _water_band(rng)
    roads = _roads(rng, water)
    counts = {c: int(rng.choice(MAX_COUNT + 1, p=_SHIP_COUNT_P if c == "ship" else _COUNT_P)) for c in CATEGORIES}
    if water is None:
        counts["ship"] = 0  # ships only on water
    placed: list[SceneObject] = []
    footprints: list[_Footprint] = []
    for category in _PLACEMENT_ORDER:
        for _ in range(counts[category]):
            # An object that finds no room after a few tries is simply left out: the ground truth is whatever
            # was placed, so counts stay exact.
            for _ in range(_PLACEMENT_TRIES):
                box = _propose(category, rng, water, roads, object_scale)
                footprint = _footprint(box)
                if _fits(category, box, footprint, footprints, water, roads):
                    placed.append(SceneObject(category, box))
                    footprints.append(footprint)
                    break
    return Scene(image_id=image_id, size=size, objects=placed, water=water, roads=roads)


def _water_band(rng: np.random.Generator) -> Optional[Rect]:
    if rng.random() >= _WATER_P:
        return None
    depth = _q(rng.uniform(0.30, 0.42))
    side = int(rng.integers(4))
    return (Rect(0.0, 0.0, depth, 1.0), Rect(_q(1 - depth), 0.0, 1.0, 1.0),
            Rect(0.0, 0.0, 1.0, depth), Rect(0.0, _q(1 - depth), 1.0, 1.0))[side]


def _roads(rng: np.random.Generator, water: Optional[Rect]) -> list[Road]:
    roads: list[Road] = []
    for _ in range(int(rng.choice(len(_ROADS_P), p=_ROADS_P))):
        vertical = bool(rng.random() < 0.5)
        lo, hi = 0.15, 0.85
        if water is not None:
            # A road parallel to the shore must run on land, else it would vanish under the water.
            band_vertical = water.y1 == 0.0 and water.y2 == 1.0
            if vertical == band_vertical:
                w_lo, w_hi = (water.x1, water.x2) if vertical else (water.y1, water.y2)
                lo, hi = (w_hi + 0.1, 0.85) if w_lo == 0.0 else (0.15, w_lo - 0.1)
        center = _q(rng.uniform(lo, hi))
        if any(r.vertical == vertical and abs(r.center - center) < 0.3 for r in roads):
            continue  # two parallel roads too close look like one wide road
        roads.append(Road(vertical, center, _q(rng.uniform(0.06, 0.08))))
    return roads


def _propose(category: str, rng: np.random.Generator, water: Optional[Rect], roads: list[Road],
             scale: float) -> Box:
    (lo, hi), (alo, ahi) = _SIZES[category]
    w = rng.uniform(lo * scale, hi * scale)
    h = w * rng.uniform(alo, ahi)
    if category == "storage tank":
        h, angle = w, 0  # a circle: its angle means nothing
    elif category == "airplane":
        angle = int(rng.integers(0, 360))  # the silhouette has a nose, so all headings differ
    else:
        angle = int(rng.integers(0, 180))  # a rectangle turned by 180° is the same rectangle
    if category == "vehicle" and roads and rng.random() < 0.6:
        # Most vehicles drive along a road: centred near its axis and heading along it.
        road = roads[int(rng.integers(len(roads)))]
        along, across = rng.uniform(0.05, 0.95), road.center + rng.uniform(-0.25, 0.25) * road.width
        cx, cy = (across, along) if road.vertical else (along, across)
        angle = ((90 if road.vertical else 0) + int(rng.integers(-6, 7))) % 180
        return Box(_q(cx), _q(cy), _q(w), _q(h), float(angle))
    # Draw the centre only where the whole rotated box fits its region (ships: the water, others: the land
    # beside it), so few proposals are wasted; _fits still checks everything exactly. The geochat answer
    # writes the *unrotated* extents, which the format clamps to the image: those must stay inside it too, or
    # the answer for a turned object near the border would describe a different box.
    theta = math.radians(angle)
    ex = (abs(w * math.cos(theta)) + abs(h * math.sin(theta))) / 2 + _EDGE_MARGIN
    ey = (abs(w * math.sin(theta)) + abs(h * math.cos(theta))) / 2 + _EDGE_MARGIN
    region = water if category == "ship" else _land(water)
    ux, uy = w / 2 + _EDGE_MARGIN, h / 2 + _EDGE_MARGIN
    cx = _uniform_within(rng, max(region.x1 + ex, ux), min(region.x2 - ex, 1 - ux))
    cy = _uniform_within(rng, max(region.y1 + ey, uy), min(region.y2 - ey, 1 - uy))
    return Box(_q(cx), _q(cy), _q(w), _q(h), float(angle))


def _uniform_within(rng: np.random.Generator, lo: float, hi: float) -> float:
    # An empty range (the object cannot fit at this angle) still yields a value; _fits then rejects it.
    return rng.uniform(lo, max(lo, hi))


def _land(water: Optional[Rect]) -> Rect:
    """The land: the image minus the water band along one edge (a rectangle too)."""
    if water is None:
        return Rect(0.0, 0.0, 1.0, 1.0)
    if water.y1 == 0.0 and water.y2 == 1.0:  # band along the left or right edge
        return Rect(water.x2, 0.0, 1.0, 1.0) if water.x1 == 0.0 else Rect(0.0, 0.0, water.x1, 1.0)
    return Rect(0.0, water.y2, 1.0, 1.0) if water.y1 == 0.0 else Rect(0.0, 0.0, 1.0, water.y1)


@dataclass(frozen=True)
class _Footprint:
    """An object grown by half the minimum gap: its polygon and bounding circle (for a cheap first test)."""

    cx: float
    cy: float
    radius: float
    polygon: tuple[tuple[float, float], ...]


def _footprint(box: Box) -> _Footprint:
    grown = _grown(box, _GAP / 2)
    return _Footprint(box.cx, box.cy, math.hypot(grown.w, grown.h) / 2, tuple(grown.polygon()))


def _fits(category: str, box: Box, footprint: _Footprint, others: list[_Footprint], water: Optional[Rect],
          roads: list[Road]) -> bool:
    corners = box.polygon()
    unrotated = Box(box.cx, box.cy, box.w, box.h).polygon()  # what the geochat answer writes, see _propose
    lo, hi = _EDGE_MARGIN, 1.0 - _EDGE_MARGIN
    if not all(lo <= x <= hi and lo <= y <= hi for x, y in corners + unrotated):
        return False
    if category == "ship":
        # Ships sit wholly on water, a little away from the shore.
        shrunk = Rect(water.x1 + _EDGE_MARGIN, water.y1 + _EDGE_MARGIN, water.x2 - _EDGE_MARGIN,
                      water.y2 - _EDGE_MARGIN) if water is not None else None
        if shrunk is None or not all(shrunk.contains(x, y) for x, y in corners):
            return False
    else:
        # Against axis-aligned water and roads the footprint's bounding rectangle is a cheap test; it is
        # slightly stricter than needed near a rotated object's corners, which only widens the gap.
        xs, ys = [x for x, _ in footprint.polygon], [y for _, y in footprint.polygon]
        bounds = Rect(min(xs), min(ys), max(xs), max(ys))
        if water is not None and _rects_meet(bounds, water):
            return False
        # Only vehicles may stand on roads; tanks, planes and courts sit beside them.
        if category != "vehicle" and any(_rects_meet(bounds, r.rect()) for r in roads):
            return False
    # Objects whose bounding circles are apart cannot overlap; only the others need the exact test.
    return not any(
        math.hypot(footprint.cx - o.cx, footprint.cy - o.cy) <= footprint.radius + o.radius
        and _overlap(footprint.polygon, o.polygon)
        for o in others
    )
