"""Boxes in every convention the remote-sensing benchmarks use.

Internally a box is ``Box(cx, cy, w, h, angle)`` in *fractions of the image* (0..1 on each axis) with the
angle in degrees, counter-clockwise as seen on screen (y grows downwards); ``angle == 0`` is axis-aligned.
Conventions (named in a dataset's metadata):

- ``geochat``: ``{<x1><y1><x2><y2>|<θ>}`` in [0, 100], the unrotated extents, rotated by θ about the centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


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
        """The four corners, counter-clockwise on screen, in the box's own units."""
        theta = math.radians(self.angle)
        cos, sin = math.cos(theta), math.sin(theta)
        corners = []
        for dx, dy in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
            x, y = dx * self.w, dy * self.h
            # y points down on screen, so a counter-clockwise turn on screen is clockwise in maths axes.
            corners.append((self.cx + x * cos + y * sin, self.cy - x * sin + y * cos))
        return corners
