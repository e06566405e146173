"""Fill textures of the toy-world styles, computed at the output resolution.

Each fill is a function ``fill(rng, place, colour_a, colour_b) -> (H, W, 3) float32`` in
[0, 1] (before clipping) that paints the whole canvas; the renderer keeps it only where the
shape's coverage mask is set. Periodic patterns are anti-aliased analytically: a sine of the
pattern phase is scaled and clipped (``_soft_square``), which gives a one-pixel soft edge
instead of jaggies.

The four patterns (striped, wavy, checkered, dotted) are drawn in the canvas frame and
anchored to the shape: axis-aligned, with their phase fixed at the shape's centre and their
period a fixed fraction of its radius (7-10 px on a 32 px canvas). Given the shape, a
pattern is then as determined as an outline is: it is visible in the denoiser's x0
estimate once the shape is. A pattern at a random angle and phase would have to be
settled from the noise alone at mid noise levels, where the prompt's pull on it is a
small part of the loss (docs/experiments.md, "The toy base model").

The "outlined" style is not a fill (it changes the coverage mask); it is painted solid here
and the renderer draws only the shape's contour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["PATTERN_SHADE", "Placement", "STYLE_FILLS", "pixel_grid"]

PATTERN_SHADE = 0.35  # second colour of a pattern = this times the first


@dataclass(frozen=True)
class Placement:
    """Where a shape sits on the canvas, in output pixels."""

    size: int  # canvas side
    cx: float
    cy: float
    radius: float
    angle: float  # shape rotation in radians


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)``, each ``(size, size)`` float32, read-only."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    x, y = np.meshgrid(coords, coords)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _rotated(place: Placement, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates rotated by ``theta`` about the shape centre: (u along, v across)."""
    x, y = pixel_grid(place.size)
    dx, dy = x - place.cx, y - place.cy
    c, s = math.cos(theta), math.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def _soft_square(phase: np.ndarray, sharpness: float = 2.5) -> np.ndarray:
    """0/1 square wave of a phase in radians with anti-aliased edges, (H, W) in [0, 1]."""
    return np.clip(0.5 + 0.5 * sharpness * np.sin(phase), 0.0, 1.0)


def _mix(t: np.ndarray, colour_a: np.ndarray, colour_b: np.ndarray) -> np.ndarray:
    # t: (H, W) weight of colour_a -> (H, W, 3)
    t = t[..., None]
    return t * colour_a + (1.0 - t) * colour_b


def _solid(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.broadcast_to(a, (place.size, place.size, 3)).astype(np.float32)


def _centred(place: Placement) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates relative to the shape centre, in units of its radius: (u right, v down)."""
    u, v = _rotated(place, 0.0)
    return u / place.radius, v / place.radius


def _shade(colour: np.ndarray) -> np.ndarray:
    """The second colour of a pattern: a dark shade of the first, so it follows from it."""
    return colour * PATTERN_SHADE


def _striped(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Vertical stripes, a boundary through the centre, 2.7 periods across the shape.
    u, _ = _centred(place)
    return _mix(_soft_square(2.0 * math.pi * u / 0.75), a, _shade(a))


def _wavy(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # The stripes bent sideways by a sine along them (2 waves over the shape's height).
    u, v = _centred(place)
    bent = u + 0.22 * np.sin(2.0 * math.pi * v)
    return _mix(_soft_square(2.0 * math.pi * bent / 0.8), a, _shade(a))


def _checkered(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Axis-aligned cells of half the radius, a corner at the centre.
    u, v = _centred(place)
    su = np.clip(2.5 * np.sin(math.pi * u / 0.5), -1.0, 1.0)
    sv = np.clip(2.5 * np.sin(math.pi * v / 0.5), -1.0, 1.0)
    return _mix(0.5 + 0.5 * su * sv, a, _shade(a))


def _dotted(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Dark dots on a ground of colour a, on a square lattice with a dot at the centre.
    u, v = _centred(place)
    period = 0.75
    fu = (u / period + 0.5) % 1.0 - 0.5
    fv = (v / period + 0.5) % 1.0 - 0.5
    dist_px = period * place.radius * np.sqrt(fu * fu + fv * fv)
    dot = np.clip(0.3 * period * place.radius - dist_px + 0.5, 0.0, 1.0)
    return _mix(1.0 - dot, a, _shade(a))


def _gradient(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    u, _ = _rotated(place, rng.uniform(0.0, 2.0 * math.pi))
    t = np.clip(0.5 + 0.5 * u / place.radius, 0.0, 1.0)
    return _mix(t, a, b)


def _noisy(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sigma = rng.uniform(0.2, 0.28)
    noise = rng.standard_normal((place.size, place.size, 3), dtype=np.float32) * sigma
    return a + noise


FillFn = Callable[[np.random.Generator, Placement, np.ndarray, np.ndarray], np.ndarray]

STYLE_FILLS: dict[str, FillFn] = {
    "solid": _solid,
    "striped": _striped,
    "dotted": _dotted,
    "checkered": _checkered,
    "gradient": _gradient,
    "outlined": _solid,
    "noisy": _noisy,
    "wavy": _wavy,
}
