"""Outline polygons of the toy-world objects, in unit coordinates.

Every shape is a closed polygon ``(K, 2)`` of ``(x, y)`` vertices (y points down, as in
image coordinates) centred on the origin and fitting roughly in the unit disc, so a
renderer only has to rotate, scale and translate it. Curved shapes (circle, heart, moon)
are sampled finely enough that they stay smooth at 4x supersampling of 64 px images.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SHAPE_POLYGONS", "shape_polygon"]

_CURVE_POINTS = 48


def _circle() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, _CURVE_POINTS, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1) * 0.95


def _square() -> np.ndarray:
    h = 0.78
    return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])


def _triangle() -> np.ndarray:
    # Equilateral, apex up; the centroid sits at the origin.
    angles = np.deg2rad([-90.0, 30.0, 150.0])
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * 1.08 + np.array([0.0, 0.1])


def _star() -> np.ndarray:
    angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1) + np.array([0.0, 0.08])


def _cross() -> np.ndarray:
    a, w = 0.92, 0.3  # arm length, arm half-width
    return np.array(
        [[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]]
    )


def _heart() -> np.ndarray:
    # Classic parametric heart curve, flipped so its point is at the bottom.
    t = np.linspace(0.0, 2.0 * math.pi, _CURVE_POINTS, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2.0
    return pts / np.abs(pts).max() * 0.98


def _moon() -> np.ndarray:
    # Crescent: the unit circle minus a circle of radius r centred at (d, 0); opens right.
    r, d = 0.8, 0.5
    x_int = (1.0 - r * r + d * d) / (2.0 * d)
    y_int = math.sqrt(1.0 - x_int * x_int)
    outer_start = math.atan2(y_int, x_int)
    inner_start = math.atan2(y_int, x_int - d)
    outer = np.linspace(outer_start, 2.0 * math.pi - outer_start, _CURVE_POINTS)
    inner = np.linspace(2.0 * math.pi - inner_start, inner_start, _CURVE_POINTS // 2)
    pts = np.concatenate(
        [np.stack([np.cos(outer), np.sin(outer)], axis=1), np.stack([d + r * np.cos(inner), r * np.sin(inner)], axis=1)]
    )
    return (pts + np.array([0.15, 0.0])) * 1.02


def _arrow() -> np.ndarray:
    # Points right: a shaft and a triangular head.
    s, n, h = 0.24, 0.15, 0.68  # shaft half-width, neck x, head half-height
    return np.array([[-0.98, -s], [n, -s], [n, -h], [0.98, 0.0], [n, h], [n, s], [-0.98, s]])


SHAPE_POLYGONS: dict[str, np.ndarray] = {
    "circle": _circle(),
    "square": _square(),
    "triangle": _triangle(),
    "star": _star(),
    "cross": _cross(),
    "heart": _heart(),
    "moon": _moon(),
    "arrow": _arrow(),
}


def shape_polygon(name: str) -> np.ndarray:
    """Unit polygon ``(K, 2)`` of shape ``name``; a ValueError lists the known shapes."""
    try:
        return SHAPE_POLYGONS[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; known shapes: {sorted(SHAPE_POLYGONS)}") from None
