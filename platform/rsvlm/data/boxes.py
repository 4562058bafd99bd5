"""Boxes in every convention the remote-sensing benchmarks use.

Internally a box is ``Box(cx, cy, w, h, angle)`` in *fractions of the image* (0..1 on each axis) with the
angle in degrees, counter-clockwise as seen on screen (y grows downwards); ``angle == 0`` is axis-aligned.
Rotated conventions assume square tiles (GeoChat 504 px, FIT-RS 512 px), where a fraction of the width and a
fraction of the height are the same length.

Conventions (:class:`BoxConvention`, named in a dataset's metadata):

- ``geochat``: ``{<x1><y1><x2><y2>|<θ>}`` in [0, 100], the unrotated extents, rotated by θ about the centre.
  Integers; θ is written as is (rounded to a whole degree).
- ``fitrs``: FIT-RS / SkySenseGPT ``{<cx><cy><w><h>|<θ>}``: centre and sides in [0, 100] of the tile with two
  decimals (``<20.00>``), θ in whole degrees in (0, 90]. θ is OpenCV's / mmrotate's ``oc`` angle: measured
  in image axes (y down), so it turns the box **clockwise** on screen, and ``Box.angle == -θ``. Several boxes
  are written ``<rbox>({…}, {…})</rbox>``; the parser finds ``{…}`` boxes anywhere, so boxes inside
  ``<ref>…</ref><rbox>(…)</rbox>`` or next to ``<rel>…</rel>`` are read too.
  *Angle normalisation* (writing): θ is rounded to a whole degree, then brought into (0, 90] by quarter
  turns; each quarter turn swaps ``w`` and ``h`` (a w×h box at θ is the h×w box at θ + 90°, and the same box
  at θ + 180°), so the corner polygon does not change. An axis-aligned w×h box is written as h×w at 90°.
- ``thousand``: ``[[x1, y1, x2, y2]]`` axis-aligned corners in [0, 1000] (InternVL, DIOR-RSVG). Several boxes
  are written in one list ``[[…], […]]``; the parser also reads repeated ``[[…]] [[…]]``. Integers are
  written; a rotated box is written as the axis-aligned box enclosing its polygon (lossy, by necessity).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from rsvlm.config.evaluation import BoxConvention  # noqa: F401 - defined with the config that names it


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
# FIT-RS boxes have the same shape; its evaluation code also writes placeholders like "<0.>", so a bare
# trailing point (and a leading one, ".5") is accepted as a number too.
_FITRS_NUMBER = r"\s*<\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*>\s*"
_FITRS = re.compile(r"\{" + _FITRS_NUMBER * 4 + r"\|" + _FITRS_NUMBER + r"\}")
# [[x1,y1,x2,y2], …]: an outer list of inner lists without nesting; each inner list is checked on its own so
# one malformed box does not hide its neighbours.
_THOUSAND_LIST = re.compile(r"\[\s*(\[[^\[\]]*\](?:\s*,\s*\[[^\[\]]*\])*)\s*\]")
_THOUSAND_ITEM = re.compile(r"\[([^\[\]]*)\]")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def format_boxes(boxes: Sequence[Box], convention: BoxConvention) -> str:
    """Write boxes the way a model is taught to answer in ``convention`` (empty string for no boxes)."""
    if convention is BoxConvention.geochat:
        parts = []
        for box in boxes:
            x1, y1 = _percent(box.cx - box.w / 2), _percent(box.cy - box.h / 2)
            x2, y2 = _percent(box.cx + box.w / 2), _percent(box.cy + box.h / 2)
            parts.append(f"{{<{x1}><{y1}><{x2}><{y2}>|<{round(box.angle)}>}}")
        return "".join(parts)
    if convention is BoxConvention.fitrs:
        if not boxes:
            return ""
        return "<rbox>(" + ", ".join(_fitrs_box(box) for box in boxes) + ")</rbox>"
    if convention is BoxConvention.thousand:
        if not boxes:
            return ""
        return "[" + ", ".join(_thousand_box(box) for box in boxes) + "]"
    raise ValueError(f"unknown box convention {convention!r}")


def parse_boxes(text: str, convention: BoxConvention) -> list[Box]:
    """Every box written in ``convention`` found anywhere in ``text``, in order; malformed ones are skipped."""
    if convention is BoxConvention.geochat:
        boxes = []
        for match in _GEOCHAT.finditer(text):
            x1, y1, x2, y2, angle = (float(v) for v in match.groups())
            boxes.append(Box.from_corners(x1 / 100, y1 / 100, x2 / 100, y2 / 100, angle))
        return boxes
    if convention is BoxConvention.fitrs:
        boxes = []
        for match in _FITRS.finditer(text):
            cx, cy, w, h, theta = (float(v) for v in match.groups())
            # FIT-RS turns clockwise on screen, Box counter-clockwise (module docstring); 0.0 avoids "-0.0".
            boxes.append(Box(cx / 100, cy / 100, w / 100, h / 100, -theta + 0.0))
        return boxes
    if convention is BoxConvention.thousand:
        boxes = []
        for group in _THOUSAND_LIST.finditer(text):
            for item in _THOUSAND_ITEM.finditer(group.group(1)):
                fields = [field.strip() for field in item.group(1).split(",")]
                if len(fields) != 4 or not all(_PLAIN_NUMBER.fullmatch(field) for field in fields):
                    continue
                x1, y1, x2, y2 = (float(field) / 1000 for field in fields)
                boxes.append(Box.from_corners(x1, y1, x2, y2))
        return boxes
    raise ValueError(f"unknown box convention {convention!r}")


def normalise_fitrs_angle(w: float, h: float, theta: float) -> tuple[float, float, int]:
    """``(w, h, θ)`` of the same rectangle with θ a whole degree in (0, 90] (FIT-RS / OpenCV ``oc`` range).

    θ is rounded first (the format writes whole degrees), then moved by quarter turns; every quarter turn swaps
    the sides, so the polygon is unchanged: a w×h box at 0° is the h×w box at 90°.
    """
    quarter_turns, rest = divmod(int(round(theta)), 90)
    if rest == 0:  # 0 is outside (0, 90]: use 90 and one quarter turn fewer
        quarter_turns, rest = quarter_turns - 1, 90
    if quarter_turns % 2:
        w, h = h, w
    return w, h, rest


def _fitrs_box(box: Box) -> str:
    w, h, theta = normalise_fitrs_angle(box.w, box.h, -box.angle)
    cx, cy, w, h = (f"{round(v * 100, 2) + 0.0:.2f}" for v in (box.cx, box.cy, w, h))
    return f"{{<{cx}><{cy}><{w}><{h}>|<{theta}>}}"


def _thousand_box(box: Box) -> str:
    if box.angle % 180 == 0:
        xs, ys = (box.cx - box.w / 2, box.cx + box.w / 2), (box.cy - box.h / 2, box.cy + box.h / 2)
    else:  # axis-aligned box enclosing the rotated polygon
        corners = box.polygon()
        xs, ys = tuple(x for x, _ in corners), tuple(y for _, y in corners)
    x1, y1, x2, y2 = (_per_mille(v) for v in (min(xs), min(ys), max(xs), max(ys)))
    return f"[{x1}, {y1}, {x2}, {y2}]"


def _percent(fraction: float) -> int:
    return int(round(min(max(fraction, 0.0), 1.0) * 100))


def _per_mille(fraction: float) -> int:
    return int(round(min(max(fraction, 0.0), 1.0) * 1000))
