"""Fill textures of the toy-world styles, computed at the output resolution.

Each fill is a function ``fill(rng, place, colour_a, colour_b) -> (H, W, 3) float32`` in
[0, 1] (before clipping) that paints the whole canvas; the renderer keeps it only where the
shape's coverage mask is set. Periodic patterns are anti-aliased analytically: a sine of the
pattern phase is scaled and clipped (``_soft_square``), which gives a one-pixel soft edge
instead of jaggies. Periods stay at >= 4 px so every pattern survives a 32 px canvas.

The "outlined" style is not a fill (it changes the coverage mask); it is painted solid here
and the renderer draws only the shape's contour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

__all__ = ["Placement", "STYLE_FILLS", "pixel_grid"]


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


def _striped(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    u, _ = _rotated(place, rng.uniform(0.0, math.pi))
    period = place.size * rng.uniform(0.15, 0.19)
    return _mix(_soft_square(2.0 * math.pi * u / period + rng.uniform(0.0, 2.0 * math.pi)), a, b)


def _wavy(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    u, v = _rotated(place, rng.uniform(0.0, math.pi))
    period = place.size * rng.uniform(0.17, 0.21)
    amplitude = place.size * rng.uniform(0.06, 0.075)
    wavelength = place.size * rng.uniform(0.28, 0.34)
    bent = u + amplitude * np.sin(2.0 * math.pi * v / wavelength + rng.uniform(0.0, 2.0 * math.pi))
    return _mix(_soft_square(2.0 * math.pi * bent / period + rng.uniform(0.0, 2.0 * math.pi)), a, b)


def _checkered(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    u, v = _rotated(place, place.angle)
    cell = place.size * rng.uniform(0.12, 0.14)
    pu = math.pi * u / cell + rng.uniform(0.0, 2.0 * math.pi)
    pv = math.pi * v / cell + rng.uniform(0.0, 2.0 * math.pi)
    su = np.clip(2.5 * np.sin(pu), -1.0, 1.0)
    sv = np.clip(2.5 * np.sin(pv), -1.0, 1.0)
    return _mix(0.5 + 0.5 * su * sv, a, b)


def _dotted(rng: np.random.Generator, place: Placement, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Dots of colour b on a ground of colour a, on a square lattice.
    u, v = _rotated(place, rng.uniform(0.0, math.pi / 2))
    period = place.size * rng.uniform(0.16, 0.18)
    radius = period * rng.uniform(0.27, 0.31)
    fu = (u / period + rng.uniform(0.0, 1.0)) % 1.0 - 0.5
    fv = (v / period + rng.uniform(0.0, 1.0)) % 1.0 - 0.5
    dist = period * np.sqrt(fu * fu + fv * fv)
    dot = np.clip(radius - dist + 0.5, 0.0, 1.0)
    return _mix(1.0 - dot, a, b)


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
