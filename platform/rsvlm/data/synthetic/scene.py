"""The ground truth of one scene (objects and their boxes, water band, roads) and the clear-cut relation
between two boxes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from rsvlm.data.boxes import Box
from rsvlm.data.synthetic.categories import CATEGORIES

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# A relation is only asked when it is clear-cut: the centres are at least this far apart (fraction of the
# image) along one axis, and that offset is at least DOMINANCE times the offset along the other axis.
RELATION_MIN_OFFSET = 0.2
RELATION_DOMINANCE = 2.0


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


def relation_between(a: Box, b: Box) -> Optional[str]:
    """The clear-cut position of ``a`` relative to ``b`` (one of RELATIONS), or None when it is ambiguous."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= RELATION_MIN_OFFSET and abs(dx) >= RELATION_DOMINANCE * abs(dy):
        return "left of" if dx < 0 else "right of"
    if abs(dy) >= RELATION_MIN_OFFSET and abs(dy) >= RELATION_DOMINANCE * abs(dx):
        return "above" if dy < 0 else "below"  # y grows downwards on screen
    return None
