"""Score generated canvas images with the judge: UnlearnCanvas metrics plus FD.

Generation stays with the caller: it passes the images and the object/style each prompt
named. ``evaluate_images`` runs the judge in batches, computes ``unlearncanvas_metrics`` on
its predictions and the Fréchet distance (FD) of its features against real procedural
images (``reference_images``, or ``reference_count`` images rendered with the fixed
``REFERENCE_SEED``). ``write_evaluation`` writes ``metrics.json``, ``metrics.md`` and
``grid.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from unlearn.data.canvas import CanvasSpec
from unlearn.data.canvas_datamodule import CanvasDataset
from unlearn.eval.judge import CanvasJudge
from unlearn.eval.metrics import frechet_distance, unlearncanvas_metrics
from unlearn.eval.report import save_image_grid, write_metrics_json, write_metrics_markdown

__all__ = ["REFERENCE_SEED", "judge_outputs", "render_reference_images", "evaluate_images", "write_evaluation"]

logger = logging.getLogger(__name__)

REFERENCE_SEED = 271_828  # seed of the real procedural images FD compares against


def _label_ids(labels: Sequence[int | str] | np.ndarray | torch.Tensor, spec: CanvasSpec, kind: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().tolist()
    index = spec.object_index if kind == "object" else spec.style_index
    return np.asarray([index(v if isinstance(v, str) else int(v)) for v in labels], dtype=np.int64)


def _check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"{name} must be a tensor (N, 3, H, W) in [-1, 1], got {shape}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.01 or hi > 1.01:
        raise ValueError(f"{name} must lie in [-1, 1], got values in [{lo:.3f}, {hi:.3f}]")
    return images


@torch.no_grad()
def judge_outputs(
    judge: CanvasJudge, images: torch.Tensor, batch_size: int = 256, desc: str = "judge"
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(predicted objects (N,), predicted styles (N,), features (N, F)) of ``images``."""
    device = next(judge.parameters()).device
    judge.eval()
    objs, styles, feats = [], [], []
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) < 8):
        x = images[start : start + batch_size].to(device, torch.float32)  # (B, 3, H, W)
        h = judge.features(x)  # (B, F)
        objs.append(judge.object_head(h).argmax(-1).cpu())
        styles.append(judge.style_head(h).argmax(-1).cpu())
        feats.append(h.cpu())
    return torch.cat(objs).numpy(), torch.cat(styles).numpy(), torch.cat(feats)


def render_reference_images(count: int, image_size: int, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """``count`` real procedural images (3, H, W) in [-1, 1], uniform over the canvas."""
    dataset = CanvasDataset(count, seed=seed, image_size=image_size, caption_mode="joint")
    return torch.cat([b["jpg"] for b in DataLoader(dataset, batch_size=512)])


def evaluate_images(
    judge: CanvasJudge,
    images: torch.Tensor,
    object_labels: Sequence[int | str] | np.ndarray | torch.Tensor,
    style_labels: Sequence[int | str] | np.ndarray | torch.Tensor,
    erased: Sequence[str] = (),
    reference_images: torch.Tensor | None = None,
    reference_count: int = 2048,
    reference_seed: int = REFERENCE_SEED,
    objects: Sequence[str] | None = None,
    styles: Sequence[str] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Judge generated images and return the metrics of ``unlearncanvas_metrics`` plus ``FD``.

    Args:
        judge: a loaded ``CanvasJudge`` (on any device).
        images: ``(N, 3, H, W)`` generated images in [-1, 1].
        object_labels / style_labels: ``(N,)`` concept each prompt named, as indices into the
            judge's lists or as names.
        erased: erased concept names (either kind; several allowed).
        reference_images: real images for FD; rendered with ``reference_seed`` when None.
        objects / styles: the generating model's concept lists; a ValueError shows both lists
            if they differ from the judge's.
    """
    spec = CanvasSpec(judge.objects, judge.styles)
    if objects is not None or styles is not None:
        spec.check_matches(
            objects if objects is not None else spec.objects,
            styles if styles is not None else spec.styles,
            "the evaluated model",
        )
    for name in erased:
        spec.concept_kind(name)  # unknown names fail here, listing every known concept
    images = _check_images(images, "images")
    true_obj = _label_ids(object_labels, spec, "object")
    true_style = _label_ids(style_labels, spec, "style")
    if not len(true_obj) == len(true_style) == images.shape[0]:
        raise ValueError(
            f"{images.shape[0]} images but {len(true_obj)} object labels and {len(true_style)} style labels"
        )
    pred_obj, pred_style, feats = judge_outputs(judge, images, batch_size, desc="judge generated")
    metrics = unlearncanvas_metrics(pred_obj, pred_style, true_obj, true_style, erased, spec)
    if reference_images is None:
        reference_images = render_reference_images(reference_count, judge.image_size, reference_seed)
    ref = _check_images(reference_images, "reference_images")
    _, _, ref_feats = judge_outputs(judge, ref, batch_size, desc="judge reference")
    metrics["FD"] = frechet_distance(feats, ref_feats)
    metrics["n_reference"] = int(ref.shape[0])
    logger.info("UA %.2f IRA %.2f CRA %.2f FD %.3f", metrics["UA"], metrics["IRA"], metrics["CRA"], metrics["FD"])
    return metrics


def write_evaluation(
    out_dir: str | Path,
    metrics: dict[str, Any],
    images: torch.Tensor,
    object_labels: Sequence[int],
    style_labels: Sequence[int],
    objects: Sequence[str],
    styles: Sequence[str],
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``grid.png`` (rows objects, columns styles)."""
    out_dir = Path(out_dir)
    return {
        "json": write_metrics_json(metrics, out_dir / "metrics.json"),
        "markdown": write_metrics_markdown(metrics, out_dir / "metrics.md"),
        "grid": save_image_grid(images, object_labels, style_labels, out_dir / "grid.png", objects, styles),
    }
