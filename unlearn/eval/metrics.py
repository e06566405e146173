"""UnlearnCanvas metrics on label arrays, and the Fréchet distance of feature sets.

Definitions (Zhang et al., "UnlearnCanvas", NeurIPS 2024 D&B; all in percent). Every image
carries the object and the style named in its prompt (``true_*``) and the judge's
predictions (``pred_*``). For a concept ``c`` of kind ``K`` (object or style),

    acc(c) = 100 * #{i : true_K[i] = c and pred_K[i] = c} / #{i : true_K[i] = c}

is the per-concept accuracy of the ``K`` head over *every* image whose prompt names ``c``,
whatever the other concept in the prompt is. With ``E`` the erased concepts and ``K_E`` the
kinds that occur in ``E``:

* **UA** (unlearning accuracy) = mean over ``c`` in ``E`` of ``100 - acc(c)``: the share of
  images prompted with an erased concept that the judge no longer recognises as it.
* **IRA** (in-domain retain accuracy) = mean of ``acc(c)`` over the concepts ``c`` of a kind
  in ``K_E`` that are not erased (e.g. for a style erasure: the other styles' accuracy).
* **CRA** (cross-domain retain accuracy) = mean of ``acc(c)`` over all concepts of the kinds
  *not* in ``K_E`` (for a style erasure: every object's accuracy), computed over **all**
  images, those prompted with the erased style included, as UnlearnCanvas does. It is NaN
  when both kinds have erased concepts.

Means are over concepts (macro), like UnlearnCanvas's per-concept averages; concepts without
any image are skipped. With a balanced object x style grid this equals the pooled share.
With nothing erased, UA, IRA and CRA are NaN. ``object_acc`` / ``style_acc`` / ``joint_acc``
are pooled over all images (joint: both heads right).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unlearn.data.canvas import CANVAS, CanvasSpec

__all__ = [
    "HEADLINE",
    "per_concept_accuracy",
    "unlearncanvas_metrics",
    "metrics_against",
    "frechet_distance",
    "share_interval",
    "wilson_interval",
]

KINDS = ("object", "style")
HEADLINE = ("UA", "IRA", "CRA", "FD")  # the figures every erasure report leads with


def _labels(values: Sequence[int] | np.ndarray | torch.Tensor, n_classes: int, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got dtype {arr.dtype} and shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name} has labels outside [0, {n_classes}): min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a share ``successes / n`` in percent (95% by default; Wilson
    1927): right where the normal approximation fails, at 0, 1 and small n. n = 0: (nan, nan)."""
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def share_interval(pairs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """{"k", "n", "ci95"} of the pooled share of (hits, images) pairs. The benchmark's figures are
    means of per-concept shares; with the same number of images per concept (as the benchmark
    draws them) that mean is the pooled share, and this is its 95% Wilson interval."""
    k, n = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return {"k": k, "n": n, "ci95": list(wilson_interval(k, n))}


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def per_concept_accuracy(pred: np.ndarray, true: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy in percent, image count), each ``(n_classes,)``; NaN accuracy for no images."""
    counts = np.bincount(true, minlength=n_classes)
    hits = np.bincount(true[pred == true], minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, 100.0 * hits / np.maximum(counts, 1), np.nan)
    return acc, counts


def unlearncanvas_metrics(
    pred_objects: Sequence[int] | np.ndarray | torch.Tensor,
    pred_styles: Sequence[int] | np.ndarray | torch.Tensor,
    true_objects: Sequence[int] | np.ndarray | torch.Tensor,
    true_styles: Sequence[int] | np.ndarray | torch.Tensor,
    erased: Sequence[str] = (),
    spec: CanvasSpec = CANVAS,
) -> dict[str, Any]:
    """UA, IRA, CRA, pooled accuracies and per-concept table (see the module docstring).

    Args:
        pred_* / true_*: ``(N,)`` integer labels, indices into ``spec.objects`` / ``spec.styles``.
        erased: names of the erased concepts, of either kind (several allowed).

    Returns:
        ``{"UA", "IRA", "CRA", "object_acc", "style_acc", "joint_acc"}`` in percent,
        ``"n_images"``, ``"erased"``, ``"per_concept"`` (rows ``{concept, kind, n,
        accuracy, erased}``) and ``"cell_joint_acc"`` (objects x styles, percent, NaN empty).
    """
    sizes = {"object": len(spec.objects), "style": len(spec.styles)}
    pred = {
        "object": _labels(pred_objects, sizes["object"], "pred_objects"),
        "style": _labels(pred_styles, sizes["style"], "pred_styles"),
    }
    true = {
        "object": _labels(true_objects, sizes["object"], "true_objects"),
        "style": _labels(true_styles, sizes["style"], "true_styles"),
    }
    n = len(true["object"])
    if n == 0 or any(len(a) != n for a in (*pred.values(), true["style"])):
        raise ValueError(
            f"need the same non-zero number of labels everywhere, got pred_objects {len(pred['object'])}, "
            f"pred_styles {len(pred['style'])}, true_objects {n}, true_styles {len(true['style'])}"
        )
    erased = list(dict.fromkeys(erased))
    erased_ids = {k: set() for k in KINDS}
    for name in erased:
        erased_ids[spec.concept_kind(name)].add(spec.concept_index(name))

    names = {"object": spec.objects, "style": spec.styles}
    acc = {}
    rows = []
    for kind in KINDS:
        acc[kind], counts = per_concept_accuracy(pred[kind], true[kind], sizes[kind])
        for i, name in enumerate(names[kind]):
            rows.append(
                {
                    "concept": name,
                    "kind": kind,
                    "n": int(counts[i]),
                    "accuracy": float(acc[kind][i]),
                    "erased": i in erased_ids[kind],
                }
            )

    erased_kinds = [k for k in KINDS if erased_ids[k]]
    counted = {"UA": [], "IRA": [], "CRA": []}  # (hits, images) of the concepts each figure averages
    for kind in KINDS:
        hits = np.bincount(true[kind][pred[kind] == true[kind]], minlength=sizes[kind])
        counts = np.bincount(true[kind], minlength=sizes[kind])
        for i in range(sizes[kind]):
            if i in erased_ids[kind]:
                counted["UA"].append((int(counts[i] - hits[i]), int(counts[i])))
            elif kind in erased_kinds:
                counted["IRA"].append((int(hits[i]), int(counts[i])))
            elif erased_kinds:
                counted["CRA"].append((int(hits[i]), int(counts[i])))
    ua = [100.0 - acc[k][i] for k in erased_kinds for i in sorted(erased_ids[k])]
    ira = [acc[k][i] for k in erased_kinds for i in range(sizes[k]) if i not in erased_ids[k]]
    cra = [acc[k][i] for k in KINDS if erased_kinds and k not in erased_kinds for i in range(sizes[k])]

    ok_obj = pred["object"] == true["object"]
    ok_style = pred["style"] == true["style"]
    counted["object_acc"] = [(int(ok_obj.sum()), n)]
    counted["style_acc"] = [(int(ok_style.sum()), n)]
    counted["joint_acc"] = [(int((ok_obj & ok_style).sum()), n)]
    cell_n = np.zeros((sizes["object"], sizes["style"]))
    cell_hits = np.zeros_like(cell_n)
    np.add.at(cell_n, (true["object"], true["style"]), 1.0)
    np.add.at(cell_hits, (true["object"], true["style"]), (ok_obj & ok_style).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        cell = np.where(cell_n > 0, 100.0 * cell_hits / np.maximum(cell_n, 1), np.nan)
    return {
        "UA": _mean(ua),
        "IRA": _mean(ira),
        "CRA": _mean(cra),
        "object_acc": 100.0 * float(ok_obj.mean()),
        "style_acc": 100.0 * float(ok_style.mean()),
        "joint_acc": 100.0 * float((ok_obj & ok_style).mean()),
        "n_images": n,
        "intervals": {key: share_interval(pairs) for key, pairs in counted.items() if pairs},
        "erased": erased,
        "per_concept": rows,
        "cell_joint_acc": cell.tolist(),
    }


def metrics_against(per_concept: Sequence[dict[str, Any]], erased: Sequence[str]) -> dict[str, float]:
    """UA, IRA and CRA of an evaluation's ``per_concept`` rows against other ``erased`` concepts.

    UA, IRA and CRA are means of per-concept accuracies, so a base model's single evaluation
    gives its figures against every concept (what a method must beat) without new images.
    Returns ``{"UA", "IRA", "CRA"}`` in percent, as `unlearncanvas_metrics` would have.
    """
    acc = {(r["kind"], r["concept"]): float(r["accuracy"]) for r in per_concept if r["n"] > 0}
    known = {concept for _, concept in acc}
    missing = [name for name in erased if name not in known]
    if missing:
        raise ValueError(f"erased: {missing} not among the evaluated concepts {sorted(known)}")
    erased_keys = {key for key in acc if key[1] in set(erased)}
    erased_kinds = {kind for kind, _ in erased_keys}
    ua = [100.0 - acc[key] for key in sorted(erased_keys)]
    ira = [a for key, a in acc.items() if key[0] in erased_kinds and key not in erased_keys]
    cra = [a for key, a in acc.items() if erased_kinds and key[0] not in erased_kinds]
    return {"UA": _mean(ua), "IRA": _mean(ira), "CRA": _mean(cra)}


def _as_double(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must be (N, F) with N >= 2, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def frechet_distance(
    feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor, eps: float = 1e-6
) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (Heusel et al. 2017, FID).

        FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)

    ``feats_*``: ``(N, F)``. ``eps`` is added to both covariance diagonals so small sample
    sets (N <= F, singular covariances) stay stable. The matrix square roots come from
    symmetric eigendecompositions in float64 (negative round-off eigenvalues clamped).
    """
    a, b = _as_double(feats_a, "feats_a"), _as_double(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: feats_a {tuple(a.shape)}, feats_b {tuple(b.shape)}")
    eye = torch.eye(a.shape[1], dtype=torch.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = torch.cov(a.T) + eps * eye  # (F, F)
    cov_b = torch.cov(b.T) + eps * eye
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = (middle + middle.T) / 2
    tr_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_sqrt
    return float(fd.clamp(min=0))
