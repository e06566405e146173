"""The toy "canvas" world: 8 objects x 8 styles, rendered procedurally.

A miniature of the UnlearnCanvas benchmark (Zhang et al., NeurIPS 2024 D&B), whose images
cross objects with artistic styles. Here an object is a shape and a style is the texture or
palette that fills it, on a plain light background. ``render_canvas`` is deterministic per
seed (``np.random.default_rng(seed)``) and jitters position, size, rotation and colours.

Anti-aliasing: the shape mask is drawn with PIL at ``SUPERSAMPLE`` x the output resolution
and box-downsampled; fill textures are anti-aliased analytically (see ``textures``).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from unlearn.data.shapes import shape_polygon
from unlearn.data.textures import STYLE_FILLS, Placement

__all__ = [
    "CANVAS_OBJECTS",
    "CANVAS_STYLES",
    "CanvasSpec",
    "CANVAS",
    "concept_kind",
    "render_canvas",
    "SUPERSAMPLE",
    "MAX_ROTATION_DEG",
]

CANVAS_OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "moon", "arrow")
CANVAS_STYLES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "gradient", "outlined", "noisy", "wavy")

SUPERSAMPLE = 4
# Rotation jitter is kept modest so no object turns into another (a rotated arrow must not
# read as a triangle, a moon must keep its opening to the right, a square not a diamond).
MAX_ROTATION_DEG = 25.0


@dataclass(frozen=True)
class CanvasSpec:
    """The concept lists of one canvas; labels are indices into these tuples."""

    objects: tuple[str, ...] = field(default=CANVAS_OBJECTS)
    styles: tuple[str, ...] = field(default=CANVAS_STYLES)

    def _known(self) -> str:
        return f"known objects: {list(self.objects)}; known styles: {list(self.styles)}"

    def concept_kind(self, name: str) -> str:
        """``"object"`` or ``"style"``; a ValueError lists every known concept."""
        if name in self.objects:
            return "object"
        if name in self.styles:
            return "style"
        raise ValueError(f"unknown concept {name!r}; {self._known()}")

    def object_index(self, obj: str | int) -> int:
        return self._index(obj, self.objects, "object")

    def style_index(self, style: str | int) -> int:
        return self._index(style, self.styles, "style")

    def concept_index(self, name: str) -> int:
        """Index of ``name`` in the list of its own kind."""
        kind = self.concept_kind(name)
        return (self.objects if kind == "object" else self.styles).index(name)

    def _index(self, value: str | int, names: tuple[str, ...], kind: str) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if 0 <= int(value) < len(names):
                return int(value)
            raise ValueError(f"{kind} index {value} out of range [0, {len(names)}); {self._known()}")
        if isinstance(value, str) and value in names:
            return names.index(value)
        raise ValueError(f"unknown {kind} {value!r}; {self._known()}")

    def check_matches(self, objects: Sequence[str], styles: Sequence[str], what: str) -> None:
        """Raise a ValueError showing both lists when ``what`` was built for another canvas."""
        if tuple(objects) != self.objects or tuple(styles) != self.styles:
            raise ValueError(
                f"{what} was built for a different canvas: objects {list(objects)} vs {list(self.objects)}, "
                f"styles {list(styles)} vs {list(self.styles)}"
            )


CANVAS = CanvasSpec()


def concept_kind(name: str) -> str:
    """``"object"`` or ``"style"`` for a concept of the default canvas."""
    return CANVAS.concept_kind(name)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shape colour a, second colour b of a clearly different hue, background), RGB in [0, 1]."""
    hue = rng.uniform(0.0, 1.0)
    a = _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.85))
    b = _hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.95))
    grey = rng.uniform(0.86, 0.97)
    background = np.clip(grey + rng.uniform(-0.03, 0.03, size=3), 0.0, 1.0).astype(np.float32)
    return a, b, background


def _placement(rng: np.random.Generator, size: int) -> Placement:
    radius = size * rng.uniform(0.30, 0.42)
    margin = radius + size * 0.03
    lo, hi = margin, max(margin, size - margin)
    return Placement(
        size=size,
        cx=float(rng.uniform(lo, hi)),
        cy=float(rng.uniform(lo, hi)),
        radius=float(radius),
        angle=math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
    )


def _coverage(polygon: np.ndarray, place: Placement, outline_px: float | None) -> np.ndarray:
    """Anti-aliased coverage ``(H, W)`` in [0, 1] of the placed polygon (or of its contour)."""
    c, s = math.cos(place.angle), math.sin(place.angle)
    rot = np.array([[c, s], [-s, c]])
    pts = (polygon @ rot * place.radius + np.array([place.cx, place.cy])) * SUPERSAMPLE
    big = place.size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    xy = [tuple(p) for p in pts.tolist()]
    if outline_px is None:
        draw.polygon(xy, fill=255)
    else:
        draw.line(xy + [xy[0], xy[1]], fill=255, width=max(1, round(outline_px * SUPERSAMPLE)), joint="curve")
    small = mask.reduce(SUPERSAMPLE)
    return np.asarray(small, dtype=np.float32) * (1.0 / 255.0)


def render_canvas(obj: str | int, style: str | int, seed: int, size: int = 32) -> np.ndarray:
    """Render one canvas image.

    Args:
        obj: object name from ``CANVAS_OBJECTS`` or its index.
        style: style name from ``CANVAS_STYLES`` or its index.
        seed: seed of ``np.random.default_rng``; the same seed gives the identical image.
        size: side of the square image in pixels (>= 16).

    Returns:
        ``(size, size, 3)`` uint8 RGB array.
    """
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    obj_name = CANVAS.objects[CANVAS.object_index(obj)]
    style_name = CANVAS.styles[CANVAS.style_index(style)]
    rng = np.random.default_rng(seed)
    place = _placement(rng, size)
    a, b, background = _colours(rng)
    outline = size * rng.uniform(0.055, 0.07) if style_name == "outlined" else None
    alpha = _coverage(shape_polygon(obj_name), place, outline)[..., None]  # (H, W, 1)
    fill = STYLE_FILLS[style_name](rng, place, a, b)  # (H, W, 3)
    image = background + alpha * (fill - background)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
