"""Boxes in every convention the remote-sensing benchmarks use.

Internally a box is ``Box(cx, cy, w, h, angle)`` in *fractions of the image* (0..1 on each axis) with the
angle in degrees, counter-clockwise as seen on screen (y grows downwards); ``angle == 0`` is axis-aligned.
Conventions (named in a dataset's metadata):

- ``geochat``: ``{<x1><y1><x2><y2>|<θ>}`` in [0, 100], the unrotated extents, rotated by θ about the centre.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Sequence


class BoxConvention(Enum):
    geochat = "geochat"


@dataclass(frozen=True)
class Box:
    """A possibly rotated box in fractions of the image (0..1), angle in degrees."""

    cx: float
    cy: float
    w: float
    h: float
    angle: float = 0.0

    @classmethod
    def from_corners(cls, x1: float, y1: float, x2: float, y2: float, angle: float = 0.0) -> "Box":
        return cls((x1 + x2) / 2, (y1 + y2) / 2, abs(x2 - x1), abs(y2 - y1), angle)

    def scaled(self, width: float, height: float) -> "Box":
        """The same box in pixels of a ``width`` × ``height`` image (rotated IoU must be taken in pixels)."""
        return Box(self.cx * width, self.cy * height, self.w * width, self.h * height, self.angle)

    def polygon(self) -> list[tuple[float, float]]:
        """The four corners (top-left, top-right, bottom-right, bottom-left before rotation), in the box's units."""
        theta = math.radians(self.angle)
        cos, sin = math.cos(theta), math.sin(theta)
        corners = []
        for dx, dy in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
            x, y = dx * self.w, dy * self.h
            # y points down on screen, so a counter-clockwise turn on screen is clockwise in maths axes.
            corners.append((self.cx + x * cos + y * sin, self.cy - x * sin + y * cos))
        return corners


# {<x1><y1><x2><y2>|<θ>}: numbers may be ints or decimals, possibly negative; spaces tolerated.
_NUMBER = r"\s*<\s*(-?\d+(?:\.\d+)?)\s*>\s*"
_GEOCHAT = re.compile(r"\{" + _NUMBER * 4 + r"\|" + _NUMBER + r"\}")


def format_boxes(boxes: Sequence[Box], convention: BoxConvention) -> str:
    """Write boxes the way a model is taught to answer in ``convention`` (boxes concatenated)."""
    if convention is BoxConvention.geochat:
        parts = []
        for box in boxes:
            x1, y1 = _percent(box.cx - box.w / 2), _percent(box.cy - box.h / 2)
            x2, y2 = _percent(box.cx + box.w / 2), _percent(box.cy + box.h / 2)
            parts.append(f"{{<{x1}><{y1}><{x2}><{y2}>|<{round(box.angle)}>}}")
        return "".join(parts)
    raise ValueError(f"unknown box convention {convention!r}")


def parse_boxes(text: str, convention: BoxConvention) -> list[Box]:
    """Every box written in ``convention`` found anywhere in ``text``, in order; malformed ones are skipped."""
    if convention is BoxConvention.geochat:
        boxes = []
        for match in _GEOCHAT.finditer(text):
            x1, y1, x2, y2, angle = (float(v) for v in match.groups())
            boxes.append(Box.from_corners(x1 / 100, y1 / 100, x2 / 100, y2 / 100, angle))
        return boxes
    raise ValueError(f"unknown box convention {convention!r}")


def _percent(fraction: float) -> int:
    return int(round(min(max(fraction, 0.0), 1.0) * 100))
