"""Deterministic synthetic aerial scenes with instruction data (the demo's, tests' and benchmarks' dataset).

A scene is textured ground, 0–2 roads (grey bands), maybe a water band along one edge, and up to a few objects
of five categories, each with its own colour *and* shape so that a tiny vision tower seeing the image at
64 × 64 px can still tell them apart:

==============  =========================================  ============================
category        shape                                      colour
==============  =========================================  ============================
storage tank    circle with a shadow and an inner ring     light grey
ship            pointed hull with a white deckhouse        orange-red, on water only
airplane        fuselage + swept wings + tail (a cross)    steel blue
vehicle         small rectangle with a dark windscreen     yellow, often on a road
tennis court    rectangle with white court lines           bright green
==============  =========================================  ============================

Every object has a :class:`~rsvlm.data.boxes.Box` (fractions of the image, angle in degrees) and no two
objects overlap. Questions (presence, count, comparison, grounding, relation, caption) are derived from that
ground truth, so every answer is right by construction.

Randomness: each image gets its own ``SeedSequence([seed, split, index])`` split into independent streams for
layout, pixels and questions. Changing how questions are asked therefore never changes an image, and the test
split does not depend on how many training images there are.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from rsvlm.data.boxes import Box, BoxConvention, format_boxes

CATEGORIES: tuple[str, ...] = ("storage tank", "ship", "airplane", "vehicle", "tennis court")
QUESTION_TYPES: tuple[str, ...] = ("presence", "count", "comparison", "grounding", "relation", "caption")

PLURALS: Mapping[str, str] = MappingProxyType({c: c + "s" for c in CATEGORIES})
SHORT_ANSWER = "Answer the question using a single word or phrase."
CAPTION_PROMPT = "Describe the image in one sentence."
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
RELATION_SUFFIX = "Answer with the option's letter from the given choices directly."
MAX_COUNT = 4

# A relation is only asked when it is clear-cut: the centres are at least this far apart (fraction of the
# image) along one axis, and that offset is at least DOMINANCE times the offset along the other axis.
RELATION_MIN_OFFSET = 0.2
RELATION_DOMINANCE = 2.0
_OPPOSITE = MappingProxyType({"left of": "right of", "right of": "left of", "above": "below", "below": "above"})

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

_COLOURS = MappingProxyType({
    "storage tank": (226, 226, 220),
    "ship": (222, 88, 42),
    "airplane": (150, 178, 228),
    "vehicle": (246, 208, 30),
    "tennis court": (46, 160, 72),
})
_GROUND_PALETTE = ((138, 124, 92), (122, 128, 88), (146, 132, 104), (112, 118, 84))
_ROAD_COLOUR = (112, 112, 116)
_WATER_COLOUR = (36, 78, 128)
_SAND_COLOUR = (188, 174, 132)


# ----------------------------------------------------------------------------------------------- scene model


@dataclass(frozen=True)
class SceneObject:
    """One object: its category and its (possibly rotated) box in fractions of the image."""

    category: str
    box: Box


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle in fractions of the image (x grows right, y grows down)."""

    x1: float
    y1: float
    x2: float
    y2: float

    def contains(self, x: float, y: float) -> bool:
        return self.x1 <= x <= self.x2 and self.y1 <= y <= self.y2


@dataclass(frozen=True)
class Road:
    """A straight road across the whole image: vertical (x = centre) or horizontal (y = centre)."""

    vertical: bool
    center: float
    width: float

    def rect(self) -> Rect:
        lo, hi = self.center - self.width / 2, self.center + self.width / 2
        return Rect(lo, 0.0, hi, 1.0) if self.vertical else Rect(0.0, lo, 1.0, hi)


@dataclass
class Scene:
    """The ground truth of one image: layout (water band, roads) and objects."""

    image_id: str
    size: int
    objects: list[SceneObject]
    water: Optional[Rect] = None
    roads: list[Road] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of objects of every category (0 included), in CATEGORIES order."""
        found = Counter(obj.category for obj in self.objects)
        return {category: found[category] for category in CATEGORIES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ground truth (the ``scenes.json`` entry without the image path)."""
        return {
            "image_id": self.image_id,
            "size": self.size,
            "water": None if self.water is None else _rect_dict(self.water),
            "roads": [{"vertical": r.vertical, "center": r.center, "width": r.width} for r in self.roads],
            "objects": [
                {"category": o.category, "cx": o.box.cx, "cy": o.box.cy, "w": o.box.w, "h": o.box.h,
                 "angle": o.box.angle}
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Scene":
        """The scene written by :meth:`to_dict` (extra keys such as ``image`` are ignored)."""
        water = data.get("water")
        return cls(
            image_id=str(data["image_id"]),
            size=int(data["size"]),
            objects=[SceneObject(o["category"], Box(o["cx"], o["cy"], o["w"], o["h"], o["angle"]))
                     for o in data["objects"]],
            water=None if water is None else Rect(water["x1"], water["y1"], water["x2"], water["y2"]),
            roads=[Road(bool(r["vertical"]), r["center"], r["width"]) for r in data.get("roads", [])],
        )


def _rect_dict(rect: Rect) -> dict[str, float]:
    return {"x1": rect.x1, "y1": rect.y1, "x2": rect.x2, "y2": rect.y2}


# ----------------------------------------------------------------------------------------------- geometry


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


def relation_between(a: Box, b: Box) -> Optional[str]:
    """The clear-cut position of ``a`` relative to ``b`` (one of RELATIONS), or None when it is ambiguous."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= RELATION_MIN_OFFSET and abs(dx) >= RELATION_DOMINANCE * abs(dy):
        return "left of" if dx < 0 else "right of"
    if abs(dy) >= RELATION_MIN_OFFSET and abs(dy) >= RELATION_DOMINANCE * abs(dx):
        return "above" if dy < 0 else "below"  # y grows downwards on screen
    return None


# ----------------------------------------------------------------------------------------------- layout


def generate_scene(rng: np.random.Generator, image_id: str, size: int) -> Scene:
    """A random scene layout: maybe a water band, 0–2 roads, and non-overlapping objects (0–4 per category)."""
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
                box = _propose(category, rng, water, roads)
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


def _propose(category: str, rng: np.random.Generator, water: Optional[Rect], roads: list[Road]) -> Box:
    (lo, hi), (alo, ahi) = _SIZES[category]
    w = rng.uniform(lo, hi)
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


# ----------------------------------------------------------------------------------------------- rendering


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The RGB image of ``scene``: noisy ground, roads, water, then objects (``rng`` only drives texture)."""
    size = scene.size
    base = np.array(_GROUND_PALETTE[int(rng.integers(len(_GROUND_PALETTE)))], dtype=np.float32)
    # Fields and soil patches: smooth low-frequency noise, plus fine grain so the ground is never flat.
    patches = _smooth_noise(rng, size, cells=6) * 16.0
    # One field of fine grain serves every layer (each layer scales it): the layers never show through one
    # another, and drawing one field instead of four keeps rendering fast.
    grain = _noise(rng, (size, size, 1), 1.0)
    tint = _noise(rng, (1, 1, 3), 3.0)
    pixels = base + patches + grain * 5.0 + tint
    for road in scene.roads:
        _paint(pixels, road.rect(), _ROAD_COLOUR, grain * 3.0)
    if scene.water is not None:
        water = scene.water
        # A strip of sand along the shore, then the water with gentle low-frequency waves.
        beach = Rect(water.x1 - 0.025, water.y1 - 0.025, water.x2 + 0.025, water.y2 + 0.025)
        _paint(pixels, beach, _SAND_COLOUR, grain * 4.0)
        _paint(pixels, water, _WATER_COLOUR, _smooth_noise(rng, size, cells=8) * 8.0 + grain * 2.0)

    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _DRAWERS[obj.category](draw, obj.box, size)
    return image


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    # float32 draws are about twice as fast as float64 ones, and 8-bit pixels need no more precision.
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``(size, size, 1)`` float noise in about [-1, 1], smooth over ``size / cells`` pixels."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    # Bilinear upsampling through PIL keeps this vectorised and fast.
    up = Image.fromarray((coarse * 255).astype(np.uint8), "L").resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(up, dtype=np.float32)[..., None] / 127.5) - 1.0


def _paint(pixels: np.ndarray, rect: Rect, colour: tuple[int, int, int], texture: np.ndarray) -> None:
    """Fill the pixels whose centres lie in ``rect`` with ``colour`` plus the same pixels of ``texture``."""
    size = pixels.shape[0]
    # Rectangles become slices (far faster than boolean masks): pixel i covers [i, i + 1) / size.
    r0, r1 = max(0, math.ceil(rect.y1 * size - 0.5)), min(size, math.floor(rect.y2 * size - 0.5) + 1)
    c0, c1 = max(0, math.ceil(rect.x1 * size - 0.5)), min(size, math.floor(rect.x2 * size - 0.5) + 1)
    pixels[r0:r1, c0:c1] = np.asarray(colour, np.float32) + texture[r0:r1, c0:c1]


def _local(box: Box, size: int, points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pixels of points given in the box's own frame (units of w and h, origin at the centre).

    Uses the same rotation as :meth:`Box.polygon`, so what is drawn is exactly what the box says.
    """
    theta = math.radians(box.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    out = []
    for u, v in points:
        x, y = u * box.w, v * box.h
        out.append(((box.cx + x * cos + y * sin) * size, (box.cy - x * sin + y * cos) * size))
    return out


def _rect_points(u1: float, v1: float, u2: float, v2: float) -> list[tuple[float, float]]:
    return [(u1, v1), (u2, v1), (u2, v2), (u1, v2)]


def _shadowed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], size: int) -> None:
    # A dark copy offset down-right, as a low sun would cast: it makes raised objects pop out of the ground.
    shift = max(1.0, size / 100)
    draw.polygon([(x + shift, y + shift) for x, y in points], fill=(45, 45, 42))


def _draw_tank(draw: ImageDraw.ImageDraw, box: Box, size: int) -> None:
    r = box.w * size / 2
    cx, cy = box.cx * size, box.cy * size
    shift = max(1.0, size / 100)
    draw.ellipse((cx - r + shift, cy - r + shift, cx + r + shift, cy + r + shift), fill=(45, 45, 42))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_COLOURS["storage tank"])
    inner = r * 0.6
    draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), outline=(180, 180, 174))


def _draw_ship(draw: ImageDraw.ImageDraw, box: Box, size: int) -> None:
    # Hull along the box's width, bow (the point) towards +u.
    hull = [(-0.5, -0.5), (0.2, -0.5), (0.5, 0.0), (0.2, 0.5), (-0.5, 0.5)]
    draw.polygon(_local(box, size, hull), fill=_COLOURS["ship"])
    draw.polygon(_local(box, size, _rect_points(-0.42, -0.28, -0.18, 0.28)), fill=(240, 240, 236))


def _draw_airplane(draw: ImageDraw.ImageDraw, box: Box, size: int) -> None:
    # Nose towards -v (up at angle 0); wings span the box's width, fuselage its height.
    fuselage = [(-0.08, -0.42), (0.0, -0.5), (0.08, -0.42), (0.08, 0.5), (-0.08, 0.5)]
    wings = [(-0.5, 0.08), (-0.08, -0.14), (0.08, -0.14), (0.5, 0.08), (0.5, 0.18), (0.08, 0.08),
             (-0.08, 0.08), (-0.5, 0.18)]
    tail = [(-0.22, 0.44), (-0.05, 0.34), (0.05, 0.34), (0.22, 0.44), (0.22, 0.5), (-0.22, 0.5)]
    parts = [_local(box, size, p) for p in (fuselage, wings, tail)]
    for part in parts:
        _shadowed(draw, part, size)
    for part in parts:
        draw.polygon(part, fill=_COLOURS["airplane"])


def _draw_vehicle(draw: ImageDraw.ImageDraw, box: Box, size: int) -> None:
    draw.polygon(_local(box, size, _rect_points(-0.5, -0.5, 0.5, 0.5)), fill=_COLOURS["vehicle"])
    draw.polygon(_local(box, size, _rect_points(0.18, -0.4, 0.34, 0.4)), fill=(40, 40, 48))


def _draw_court(draw: ImageDraw.ImageDraw, box: Box, size: int) -> None:
    white, width = (245, 245, 245), max(1, round(size / 128))
    draw.polygon(_local(box, size, _rect_points(-0.5, -0.5, 0.5, 0.5)), fill=_COLOURS["tennis court"])

    def line(u1: float, v1: float, u2: float, v2: float) -> None:
        draw.line(_local(box, size, [(u1, v1), (u2, v2)]), fill=white, width=width)

    # Court length along u: outer lines inset from the box edge, net across the middle, service lines.
    e, s = 0.44, 0.38
    outer = _local(box, size, _rect_points(-e, -s, e, s))
    draw.line(outer + outer[:1], fill=white, width=width)
    line(0.0, -s - 0.06, 0.0, s + 0.06)  # the net sticks out past the sidelines
    line(-0.24, -s, -0.24, s)
    line(0.24, -s, 0.24, s)
    line(-0.24, 0.0, 0.24, 0.0)


_DRAWERS = MappingProxyType({
    "storage tank": _draw_tank,
    "ship": _draw_ship,
    "airplane": _draw_airplane,
    "vehicle": _draw_vehicle,
    "tennis court": _draw_court,
})


# ----------------------------------------------------------------------------------------------- language


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def presence_question(category: str) -> str:
    return f"Is there {_article(category)} {category} in the image?\n{SHORT_ANSWER}"


def count_question(category: str) -> str:
    return f"How many {PLURALS[category]} are there in the image?\n{SHORT_ANSWER}"


def comparison_question(a: str, b: str) -> str:
    return f"Are there more {PLURALS[a]} than {PLURALS[b]}?\n{SHORT_ANSWER}"


def grounding_question(category: str) -> str:
    return f"[refer] Where is the {category}?"


def relation_question(a: str, b: str, rotation: int = 0) -> tuple[str, tuple[str, ...]]:
    """The single-choice question and its options, rotated left by ``rotation`` (CircularEval order)."""
    options = RELATIONS[rotation:] + RELATIONS[:rotation]
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))
    return f"What is the position of the {a} relative to the {b}?\n{lines}\n{RELATION_SUFFIX}", options


def caption_text(counts: Mapping[str, int], water: bool, roads: int) -> str:
    """The templated one-sentence caption for these category counts and terrain."""
    items = [f"{n} {category if n == 1 else PLURALS[category]}" for category, n in counts.items() if n > 0]
    if not items:
        subject = "An aerial image with no objects"
    elif len(items) == 1:
        subject = f"An aerial image with {items[0]}"
    else:
        subject = f"An aerial image with {', '.join(items[:-1])} and {items[-1]}"
    terrain = (["water"] if water else []) + (["a road"] if roads == 1 else [f"{roads} roads"] if roads else [])
    return f"{subject} near {' and '.join(terrain)}." if terrain else f"{subject} on open land."


def questions_for_scene(scene: Scene, rng: np.random.Generator, *, circular: bool = False) -> list[dict]:
    """Questions about ``scene`` with their answers, derived from the ground truth.

    Each item is ``{"category": question type, "text": question, "answer": answer, "group": int}``. Items
    with the same ``group`` are one question: with ``circular`` a relation question appears once per rotation
    of its options (CircularEval), otherwise once with a random rotation.
    """
    counts = scene.counts()
    present = [c for c in CATEGORIES if counts[c] > 0]
    absent = [c for c in CATEGORIES if counts[c] == 0]
    items: list[dict] = []

    def add(kind: str, text: str, answer: str, group: Optional[int] = None) -> None:
        items.append({"category": kind, "text": text, "answer": answer,
                      "group": len({i["group"] for i in items}) if group is None else group})

    # presence: one "yes" and one "no" per scene (when the scene allows) keeps the dataset balanced 50/50.
    for pool, answer in ((present, "yes"), (absent, "no")):
        if pool:
            add("presence", presence_question(_pick(rng, pool)), answer)

    # count: mostly present categories (counts 1–4), sometimes an absent one so that 0 is seen too.
    for category in _pick_many(rng, CATEGORIES, 2, weights=[3.0 if counts[c] else 1.0 for c in CATEGORIES]):
        add("count", count_question(category), str(counts[category]))

    # comparison: prefer pairs whose counts differ, so "yes" and "no" are both common.
    pairs = [(a, b) for a in CATEGORIES for b in CATEGORIES if a != b]
    unequal = [p for p in pairs if counts[p[0]] != counts[p[1]]]
    a, b = _pick(rng, unequal if unequal and rng.random() < 0.8 else pairs)
    add("comparison", comparison_question(a, b), "yes" if counts[a] > counts[b] else "no")

    # grounding: only a category present exactly once has an unambiguous "the {category}".
    single = {c: next(o for o in scene.objects if o.category == c) for c in CATEGORIES if counts[c] == 1}
    if single:
        category = _pick(rng, list(single))
        add("grounding", grounding_question(category), format_boxes([single[category].box], BoxConvention.geochat))

    # relation: between two single objects whose relative position is clear-cut; up to two different pairs,
    # because few scenes have two singletons and this is the hardest question type to learn.
    clear = [(a, b, rel) for a in single for b in single
             if a < b and (rel := relation_between(single[a].box, single[b].box)) is not None]
    for index in rng.permutation(len(clear))[:2]:
        a, b, relation = clear[int(index)]
        if rng.random() < 0.5:  # ask both ways round: "a relative to b" and "b relative to a"
            a, b, relation = b, a, _OPPOSITE[relation]
        group = len({i["group"] for i in items})
        for rotation in range(4) if circular else [int(rng.integers(4))]:
            text, options = relation_question(a, b, rotation)
            add("relation", text, OPTION_LETTERS[options.index(relation)], group)

    add("caption", CAPTION_PROMPT, caption_text(counts, scene.water is not None, len(scene.roads)))
    return items


def vqa_turns(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """2–3 distinct presence/count ``(question, answer)`` pairs for one multi-turn conversation."""
    counts = scene.counts()
    candidates = [(presence_question(c), "yes" if counts[c] else "no") for c in CATEGORIES]
    candidates += [(count_question(c), str(counts[c])) for c in CATEGORIES]
    n = int(rng.integers(2, 4))
    return [candidates[i] for i in rng.choice(len(candidates), size=n, replace=False)]


def _pick(rng: np.random.Generator, pool: Sequence[Any]) -> Any:
    return pool[int(rng.integers(len(pool)))]


def _pick_many(rng: np.random.Generator, pool: Sequence[str], n: int, weights: Sequence[float]) -> list[str]:
    p = np.asarray(weights, dtype=np.float64)
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False, p=p / p.sum())]


# ----------------------------------------------------------------------------------------------- corpus


def corpus() -> list[str]:
    """Every phrase the generator can emit (questions, options, answers, captions, box text), for the tokenizer.

    Built from the same templates as the questions, so a tokenizer trained on it has seen every word.
    """
    texts: list[str] = [CAPTION_PROMPT, SHORT_ANSWER, RELATION_SUFFIX, "yes", "no", *OPTION_LETTERS]
    texts += [str(d) for d in range(10)]
    for a in CATEGORIES:
        texts += [presence_question(a), count_question(a), grounding_question(a)]
        for b in CATEGORIES:
            if a != b:
                texts.append(comparison_question(a, b))
                texts += [relation_question(a, b, rotation)[0] for rotation in range(4)]
    texts += [f"{letter}. {option}" for letter in OPTION_LETTERS for option in RELATIONS]
    # Box answers in the exact geochat layout: boxes of realistic sizes that use every digit, angles 0–359.
    for i, x in enumerate(range(2, 84, 3)):
        y, angle = (x * 7) % 76 + 2, (i * 37) % 360
        box = Box.from_corners(x / 100, y / 100, (x + 10 + i % 16) / 100, (y + 5 + i % 13) / 100, angle)
        texts.append(format_boxes([box], BoxConvention.geochat))
    # Captions: each category at every count, a few mixtures, and every terrain.
    terrains = [(water, roads) for water in (False, True) for roads in (0, 1, 2)]
    for n in range(MAX_COUNT + 1):
        for category in CATEGORIES:
            counts = {c: (n if c == category else 0) for c in CATEGORIES}
            texts += [caption_text(counts, water, roads) for water, roads in terrains]
    for n in range(1, MAX_COUNT + 1):
        texts.append(caption_text({c: n for c in CATEGORIES}, True, 1))
    return list(dict.fromkeys(texts))  # drop repeats, keep the order


# ----------------------------------------------------------------------------------------------- dataset files


def write_dataset(out_dir: str | Path, *, seed: int = 0, num_train_images: int = 400, num_test_images: int = 60,
                  image_size: int = 128) -> dict:
    """Write images, LLaVA records, benchmark questions and ground truth under ``out_dir``; return a summary.

    Layout: ``images/{train,test}_NNNNN.png``, ``train.json`` and ``test.json`` (LLaVA conversation lists),
    ``test_questions.jsonl`` (public benchmark format), ``scenes.json`` (ground truth). Every file is written
    to a temporary name and renamed, so a crash never leaves a half-written one.
    """
    if seed < 0 or num_train_images < 0 or num_test_images < 0 or image_size < 16:
        raise ValueError(f"write_dataset: need seed >= 0, image counts >= 0 and image_size >= 16, got seed={seed}, "
                         f"num_train_images={num_train_images}, num_test_images={num_test_images}, "
                         f"image_size={image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes: list[dict] = []
    train: list[dict] = []
    test: list[dict] = []
    test_questions: list[dict] = []
    next_question_id = 0

    for split, split_code, count in (("train", 0, num_train_images), ("test", 1, num_test_images)):
        for index in range(count):
            layout_rng, pixel_rng, question_rng = (
                np.random.default_rng(s) for s in np.random.SeedSequence([seed, split_code, index]).spawn(3))
            image_id = f"{split}_{index:05d}"
            image_rel = f"images/{image_id}.png"
            scene = generate_scene(layout_rng, image_id, image_size)
            _save_png(render_scene(scene, pixel_rng), out / image_rel)
            scenes.append({"image": image_rel, "split": split, **scene.to_dict()})

            questions = questions_for_scene(scene, question_rng, circular=split == "test")
            records = train if split == "train" else test
            group_ids: dict[int, int] = {}
            for k, item in enumerate(questions):
                records.append(_record(f"{image_id}_q{k}", image_rel, [(item["text"], item["answer"])],
                                       item["category"]))
                if split == "test":
                    if item["group"] not in group_ids:
                        group_ids[item["group"]] = next_question_id
                        next_question_id += 1
                    test_questions.append({"question_id": group_ids[item["group"]], "image": image_rel,
                                           "text": item["text"], "category": item["category"],
                                           "ground_truth": item["answer"]})
            if split == "train":
                train.append(_record(f"{image_id}_vqa", image_rel, vqa_turns(scene, question_rng), "vqa"))

    _write_text(out / "scenes.json", json.dumps(
        {"seed": seed, "image_size": image_size, "categories": list(CATEGORIES), "images": scenes}, indent=1))
    _write_text(out / "train.json", json.dumps(train, indent=1, ensure_ascii=False))
    _write_text(out / "test.json", json.dumps(test, indent=1, ensure_ascii=False))
    _write_text(out / "test_questions.jsonl",
                "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in test_questions))
    return {
        "seed": seed,
        "image_size": image_size,
        "images": {"train": num_train_images, "test": num_test_images},
        "records": {"train": dict(sorted(Counter(r["task"] for r in train).items())),
                    "test": dict(sorted(Counter(r["task"] for r in test).items()))},
        "test_questions": {kind: sum(q["category"] == kind for q in test_questions) for kind in QUESTION_TYPES},
        "test_question_ids": next_question_id,
    }


def _record(record_id: str, image: str, turns: Sequence[tuple[str, str]], task: str) -> dict:
    conversations = []
    for i, (question, answer) in enumerate(turns):
        # Only the first human turn carries the image placeholder, as LLaVA expects.
        conversations.append({"from": "human", "value": f"<image>\n{question}" if i == 0 else question})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": record_id, "image": image, "conversations": conversations, "task": task}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Level 1: 3× faster than the default and, on noisy ground, no bigger.
    image.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)
