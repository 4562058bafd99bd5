"""Rendering a scene to RGB pixels: textured ground, roads, water, then each category's silhouette."""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from rsvlm.data.boxes import Box
from rsvlm.data.synthetic.scene import Rect, Scene

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
