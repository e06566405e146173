"""The toy benchmark: generate every (object, style) prompt with fixed seeds and judge it.

Both `scripts/evaluate.py` and the erasure modules (at the end of training) call
`run_toy_benchmark`, so a number in a run's ``eval/metrics.json`` and one printed by the
script come from the same code, prompts and seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unlearn.data.canvas import CanvasSpec
from unlearn.data.captions import eval_prompt
from unlearn.eval.evaluate import evaluate_images, write_evaluation
from unlearn.eval.judge import CanvasJudge, load_judge
from unlearn.eval.report import metrics_markdown

log = logging.getLogger(__name__)

DEFAULT_JUDGE = "checkpoints/toy/judge.safetensors"
# Image k of every prompt starts from seed EVAL_SEED + k: the same noise for every cell,
# so cells differ only by their prompt.
EVAL_SEED = 0


def benchmark_prompts(spec: CanvasSpec, images_per_prompt: int, seed: int = EVAL_SEED):
    """(prompts, seeds, object labels, style labels), each of length 64 * images_per_prompt."""
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    prompts, seeds, objs, styles = [], [], [], []
    for o in range(len(spec.objects)):
        for s in range(len(spec.styles)):
            for k in range(images_per_prompt):
                prompts.append(eval_prompt(o, s, spec))
                seeds.append(seed + k)
                objs.append(o)
                styles.append(s)
    return prompts, seeds, np.asarray(objs), np.asarray(styles)


@torch.no_grad()
def generate_grid(
    model, prompts: Sequence[str], seeds: Sequence[int], batch_size: int = 64, sampler=None
) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] on the CPU, generated in batches with a progress bar."""
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch"):
        end = start + batch_size
        out.append(model.generate(prompts[start:end], seeds=seeds[start:end], sampler=sampler).float().cpu())
    return torch.cat(out)


def run_toy_benchmark(
    model,
    erased: Sequence[str] = (),
    judge: CanvasJudge | str | Path = DEFAULT_JUDGE,
    out_dir: str | Path | None = None,
    images_per_prompt: int = 4,
    batch_size: int = 64,
    sampler=None,
    seed: int = EVAL_SEED,
    model_concepts: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Generate, judge and (with ``out_dir``) write metrics.json, metrics.md and grid.png."""
    if not isinstance(judge, CanvasJudge):
        judge = load_judge(judge)
    judge = judge.to(model.device)
    spec = CanvasSpec(tuple(judge.objects), tuple(judge.styles))
    objects, styles = model_concepts if model_concepts is not None else (None, None)
    if model_concepts is not None:
        spec.check_matches(objects, styles, "the evaluated model")
    for name in erased:
        spec.concept_kind(name)  # fail before generating anything
    prompts, seeds, true_obj, true_style = benchmark_prompts(spec, images_per_prompt, seed)
    images = generate_grid(model, prompts, seeds, batch_size, sampler)
    if images.shape[-1] != judge.image_size:
        raise ValueError(f"the model makes {images.shape[-1]} px images but the judge expects {judge.image_size} px")
    metrics = evaluate_images(judge, images, true_obj, true_style, erased=list(erased))
    metrics["erased"] = list(erased)
    metrics["images_per_prompt"] = images_per_prompt
    if out_dir is not None:
        write_evaluation(out_dir, metrics, images, true_obj, true_style, spec.objects, spec.styles)
    log.info("toy benchmark:\n%s", metrics_markdown(metrics))
    return metrics
