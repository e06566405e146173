"""Toy benchmark before and after an erasure run, for models trained on the toy canvas.

``eval_config`` keys: ``images_per_prompt`` (2), ``batch_size`` (64), ``num_steps`` and
``guidance_scale`` and ``sampler`` (default: the model's sampler config), ``judge`` (the
shipped toy judge), ``before`` (True: also evaluate the unmodified model at train start).
Results: ``<run_dir>/eval/before/metrics.json`` and ``<run_dir>/eval/metrics.json`` (with
``metrics.md`` and ``grid.png`` beside them) and ``<run_dir>/eval/before_after.md``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from unlearn.eval import toy_benchmark
from unlearn.eval.metrics import HEADLINE

log = logging.getLogger(__name__)

__all__ = ["EVAL_KEYS", "run_before_after", "before_after_table"]

EVAL_KEYS = ("images_per_prompt", "batch_size", "num_steps", "guidance_scale", "sampler", "judge", "before")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def before_after_table(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """Markdown: one row per headline metric, columns before / after."""
    lines = ["| metric | before | after |", "|---|---|---|"]
    for key in HEADLINE:
        lines.append(f"| {key} | {_fmt((before or {}).get(key))} | {_fmt(after.get(key))} |")
    return "\n".join(lines)


def run_before_after(model, out_dir: Path, phase: str) -> dict[str, Any]:
    """Run the toy benchmark on ``model`` into ``out_dir``; after training, log the comparison."""
    cfg = dict(model.eval_config or {})
    sampler = model.make_sampler(cfg.get("sampler"), cfg.get("num_steps"), cfg.get("guidance_scale"))
    kwargs: dict[str, Any] = {}
    if cfg.get("judge"):
        kwargs["judge"] = cfg["judge"]
    metrics = toy_benchmark.run_toy_benchmark(
        model, erased=list(model.concepts), out_dir=out_dir, images_per_prompt=int(cfg.get("images_per_prompt", 2)),
        batch_size=int(cfg.get("batch_size", 64)), sampler=sampler, model_concepts=model.canvas_concepts, **kwargs,
    )
    if phase == "after":
        before_path = Path(out_dir) / "before" / "metrics.json"
        before = json.loads(before_path.read_text()) if before_path.is_file() else None
        table = before_after_table(before, metrics)
        (Path(out_dir) / "before_after.md").write_text(table + "\n")
        log.info("toy benchmark, erased %s:\n%s", ", ".join(model.concepts), table)
        if model.logger is not None:
            model.logger.log_metrics({f"eval/{k}": float(metrics[k]) for k in HEADLINE
                                      if isinstance(metrics.get(k), (int, float))}, step=model.global_step)
    return metrics
