"""Images for a prompt CSV (I2P / UnlearnCanvas layout) and, optionally, their nudity rate.

Each row of the CSV (``prompt``, ``categories``, ``evaluation_seed``, ``evaluation_guidance``;
`unlearn.data.prompts.read_prompt_csv`) gives ``images_per_prompt`` images: image k of a row
starts from the noise of ``evaluation_seed + k`` and is guided with ``evaluation_guidance``;
a row without them uses ``seed + k`` and the given (else the config's) guidance scale, as
I2P evaluations do. ``run_prompt_benchmark`` writes::

    <out_dir>/images/00000_0.png ...   row index, image index
    <out_dir>/prompts.csv              one line per image: image, prompt, categories, seed, guidance
    <out_dir>/<metrics name>           the settings and, with ``nudity``, `evaluate_nudity`'s result
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearn.atomic import atomic_path, atomic_write_text
from unlearn.data.prompts import PromptRow, read_prompt_csv

log = logging.getLogger(__name__)

__all__ = ["select_rows", "generate_prompt_images", "run_prompt_benchmark"]

ECHO_COLUMNS = ("image", "prompt", "categories", "evaluation_seed", "evaluation_guidance")


def select_rows(rows: Sequence[PromptRow], categories: Sequence[str] | None = None) -> list[PromptRow]:
    """Rows with at least one of ``categories`` (case-insensitive); all rows when None or empty."""
    if not categories:
        return list(rows)
    wanted = {c.strip().lower() for c in categories if c.strip()}
    picked = [r for r in rows if wanted & {c.lower() for c in r.categories}]
    if not picked:
        known = sorted({c for r in rows for c in r.categories})
        raise ValueError(f"--categories {sorted(wanted)}: no prompt has them; the CSV's categories: {known}")
    return picked


def generate_prompt_images(
    model,
    rows: Sequence[PromptRow],
    out_dir: str | Path,
    images_per_prompt: int = 1,
    seed: int = 0,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Generate and save the images of ``rows`` under ``out_dir/images``; returns one record
    per image (``ECHO_COLUMNS``, ``path``), in row order."""
    import torch

    from unlearn.callbacks.image_logger import save_grid

    if images_per_prompt < 1 or batch_size < 1:
        raise ValueError(f"images_per_prompt and batch_size must be >= 1, got {images_per_prompt}, {batch_size}")
    image_dir = Path(out_dir) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, row in enumerate(rows):
        base = seed if row.evaluation_seed is None else row.evaluation_seed
        scale = guidance_scale if row.evaluation_guidance is None else row.evaluation_guidance
        for k in range(images_per_prompt):
            records.append(
                {
                    "image": f"{i:05d}_{k}.png",
                    "prompt": row.prompt,
                    "categories": ",".join(row.categories),
                    "evaluation_seed": base + k,
                    "evaluation_guidance": scale,
                }
            )
    # One sampler per guidance scale; a batch never mixes scales.
    by_scale: dict[Any, list[dict[str, Any]]] = {}
    for rec in records:
        by_scale.setdefault(rec["evaluation_guidance"], []).append(rec)
    with torch.no_grad():
        for scale, group in by_scale.items():
            made = model.make_sampler(sampler, num_steps, scale)
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                images = model.generate(
                    [r["prompt"] for r in chunk], seeds=[r["evaluation_seed"] for r in chunk], sampler=made
                )  # (B, 3, H, W) in [-1, 1]
                for rec, image in zip(chunk, images):
                    rec["path"] = image_dir / rec["image"]
                    save_grid(image[None], rec["path"], nrow=1, padding=0)
                    if scale is None:  # echo the config's scale
                        rec["evaluation_guidance"] = getattr(getattr(made, "guider", None), "scale", "")
    log.info("wrote %d images for %d prompts to %s", len(records), len(rows), image_dir)
    return records


def run_prompt_benchmark(
    model,
    prompts_csv: str | Path,
    out: str | Path,
    categories: Sequence[str] | None = None,
    nudity: bool = False,
    nudity_classes: Sequence[str] | str | None = None,
    nudity_threshold: float | None = None,
    detector=None,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Images for the CSV's (filtered) rows, ``prompts.csv`` beside them and the metrics json ``out``."""
    out = Path(out)
    rows = select_rows(read_prompt_csv(prompts_csv), categories)
    records = generate_prompt_images(model, rows, out.parent, **generate_kwargs)
    with (
        atomic_path(out.parent / "prompts.csv", "prompt list") as tmp,
        tmp.open("w", newline="", encoding="utf-8") as f,
    ):
        writer = csv.DictWriter(f, fieldnames=ECHO_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    metrics: dict[str, Any] = {
        "prompts_file": str(prompts_csv),
        "categories": list(categories or []),
        "num_prompts": len(rows),
        "num_images": len(records),
        "images_per_prompt": generate_kwargs.get("images_per_prompt", 1),
        "images_dir": str(out.parent / "images"),
    }
    if nudity:
        from unlearn.eval.nudity import DEFAULT_THRESHOLD, evaluate_nudity

        threshold = DEFAULT_THRESHOLD if nudity_threshold is None else nudity_threshold
        metrics["nudity"] = evaluate_nudity(
            [r["path"] for r in records], classes=nudity_classes, threshold=threshold, detector=detector
        )
    atomic_write_text(out, json.dumps(metrics, indent=2) + "\n", "metrics")
    return metrics
