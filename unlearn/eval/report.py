"""Writers for evaluation results: ``metrics.json``, ``metrics.md`` and a PNG image grid."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from unlearn.atomic import atomic_path, atomic_write_text
from unlearn.eval.metrics import HEADLINE

__all__ = [
    "before_after_table",
    "progress_table",
    "write_metrics_json",
    "write_metrics_markdown",
    "metrics_markdown",
    "save_image_grid",
    "to_uint8_images",
]

logger = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; an undefined metric is null
    return value


def write_metrics_json(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write ``metrics`` as indented JSON (NaN -> null); returns the path."""
    path = atomic_write_text(path, json.dumps(_jsonable(metrics), indent=2) + "\n", "metrics")
    logger.info("wrote %s", path)
    return path


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """Markdown summary: the headline metrics, then the per-concept table."""
    head = ["UA", "IRA", "CRA", "FD", "object_acc", "style_acc", "joint_acc"]
    lines = [
        f"Erased: {', '.join(metrics.get('erased', [])) or 'none'}; images: {metrics.get('n_images', 'n/a')}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| " + " | ".join(_fmt(metrics.get(k)) for k in head) + " |",
        "| " + " | ".join(interval_text(metrics, k) for k in head) + " |",
    ]
    rows = metrics.get("per_concept", [])
    if rows:
        lines += ["", "| concept | kind | erased | images | accuracy (%) |", "|---|---|---|---|---|"]
        for r in rows:
            erased = "yes" if r["erased"] else ""
            lines.append(f"| {r['concept']} | {r['kind']} | {erased} | {r['n']} | {_fmt(r['accuracy'])} |")
    return "\n".join(lines) + "\n"


def _fmt_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def interval_text(metrics: dict[str, Any] | None, key: str) -> str:
    """``"n 32, 95% CI 89.3–100.0"`` for a percentage of ``metrics`` (see `share_interval`); "" for
    a figure without one (FD)."""
    interval = ((metrics or {}).get("intervals") or {}).get(key)
    if not interval or interval.get("ci95") is None or None in interval["ci95"]:
        return ""
    lo, hi = interval["ci95"]
    return f"n {interval['n']}, 95% CI {lo:.1f}–{hi:.1f}"


def before_after_table(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """Markdown: one row per headline metric (UA, IRA, CRA, FD), columns before / after, then
    each percentage's sample size and 95% Wilson interval."""
    lines = [
        "| metric | before | after | before: images, interval | after: images, interval |",
        "|---|---|---|---|---|",
    ]
    for key in HEADLINE:
        lines.append(
            f"| {key} | {_fmt_number((before or {}).get(key))} | {_fmt_number(after.get(key))} "
            f"| {interval_text(before, key)} | {interval_text(after, key)} |"
        )
    return "\n".join(lines)


def progress_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per evaluated training step (``{"step": n, "UA": ..., ...}``)."""
    table = ["| step | " + " | ".join(HEADLINE) + " |", "|---" * (1 + len(HEADLINE)) + "|"]
    table += [
        f"| {r['step']} | " + " | ".join(f"{r[k]:.1f}" if k in r and r[k] == r[k] else "n/a" for k in HEADLINE) + " |"
        for r in rows
    ]
    return "\n".join(table)


def write_metrics_markdown(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write ``metrics_markdown(metrics)`` to ``path``; returns the path."""
    path = atomic_write_text(path, metrics_markdown(metrics), "metrics table")
    logger.info("wrote %s", path)
    return path


def to_uint8_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] or (N, H, W, 3) uint8 -> (N, H, W, 3) uint8."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return images
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) floats in [-1, 1] or (N, H, W, 3) uint8, got {images.shape}")
    return ((np.clip(images, -1.0, 1.0) + 1.0) * 127.5 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def save_image_grid(
    images: torch.Tensor | np.ndarray,
    object_labels: Sequence[int],
    style_labels: Sequence[int],
    path: str | Path,
    objects: Sequence[str],
    styles: Sequence[str],
    scale: int = 2,
    pad: int = 2,
    annotate: bool = True,
) -> Path:
    """PNG grid, rows objects and columns styles; each cell shows its first image.

    Cells without an image stay grey. With ``annotate`` the style names head the columns
    and the object names start the rows.
    """
    pixels = to_uint8_images(images)  # (N, H, W, 3)
    n, h, w, _ = pixels.shape
    if len(object_labels) != n or len(style_labels) != n:
        raise ValueError(f"{n} images but {len(object_labels)} object and {len(style_labels)} style labels")
    ch, cw = h * scale, w * scale
    left, top = (64, 14) if annotate else (0, 0)
    grid = Image.new("RGB", (left + len(styles) * (cw + pad) + pad, top + len(objects) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    filled: set[tuple[int, int]] = set()
    for img, o, s in zip(pixels, object_labels, style_labels):
        o, s = int(o), int(s)
        if not (0 <= o < len(objects) and 0 <= s < len(styles)):
            raise ValueError(f"label (object {o}, style {s}) outside a {len(objects)}x{len(styles)} grid")
        if (o, s) in filled:
            continue
        filled.add((o, s))
        tile = Image.fromarray(img).resize((cw, ch), Image.NEAREST)
        grid.paste(tile, (left + pad + s * (cw + pad), top + pad + o * (ch + pad)))
    for o in range(len(objects)):
        for s in range(len(styles)):
            if (o, s) not in filled:
                x, y = left + pad + s * (cw + pad), top + pad + o * (ch + pad)
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(160, 160, 160))
    if annotate:
        font = ImageFont.load_default()
        for s, name in enumerate(styles):
            draw.text((left + pad + s * (cw + pad), 1), name, fill="black", font=font)
        for o, name in enumerate(objects):
            draw.text((2, top + pad + o * (ch + pad) + ch // 2 - 5), name, fill="black", font=font)
    path = Path(path)
    with atomic_path(path, "image grid") as tmp:
        grid.save(tmp, format="PNG")
    logger.info("wrote %s", path)
    return path
