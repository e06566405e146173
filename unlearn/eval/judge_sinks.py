"""The concepts a judge names when an image is merely degraded ("sink" concepts).

Erasure that fails by blurring or collapsing the image is not erasure, and a concept the
judge assigns to such images cannot be measured: images of it that lost their detail still
read as it (UA looks low although the concept may be gone), and every other concept's
degraded images read as it too. On the toy canvas judge, blurred renders read as the
"gradient" style. A benchmark that picks
concepts to erase leaves these out; ``judge_sinks`` measures them from the judge itself, on
Gaussian-blurred real renders, so the choice does not depend on any method's results. A
concept is a sink when it takes more than ``SINK_SHARE`` percent of the blurred images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF

from unlearn.eval.evaluate import judge_outputs, render_reference_images
from unlearn.eval.judge import CanvasJudge

__all__ = ["BLUR_SIGMAS", "SINK_SEED", "SINK_SHARE", "blur", "judge_sinks"]

BLUR_SIGMAS = (1.5, 2.0, 3.0)  # pixels, at the judge's image size
SINK_SEED = 314_159  # seed of the real renders that get blurred
SINK_SHARE = 50.0  # percent of the blurred images; most of them, not just the most common answer


def _shares(pred: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(pred, minlength=len(names))
    return {name: 100.0 * float(c) / len(pred) for name, c in zip(names, counts)}


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` (N, C, H, W) under a Gaussian blur of ``sigma`` pixels (a kernel of +-3 sigma)."""
    return TF.gaussian_blur(images, kernel_size=2 * int(np.ceil(3 * sigma)) + 1, sigma=float(sigma))


def judge_sinks(
    judge: CanvasJudge, count: int = 256, sigmas: Sequence[float] = BLUR_SIGMAS, seed: int = SINK_SEED
) -> dict[str, dict]:
    """For each head, the concepts the judge gives to most blurred real renders.

    Returns ``{"object": {"sinks": [names], "shares": {name: percent}}, "style": {...}}``;
    the shares are over ``count`` renders blurred at each of ``sigmas`` (Gaussian, pixels),
    and a sink takes more than ``SINK_SHARE`` percent of them (so there is at most one).
    """
    images = render_reference_images(count, judge.image_size, seed=seed)  # (N, 3, H, W)
    objects, styles, _ = judge_outputs(judge, torch.cat([blur(images, sigma) for sigma in sigmas]))
    out = {}
    for kind, pred, names in (("object", objects, judge.objects), ("style", styles, judge.styles)):
        shares = _shares(pred, list(names))
        out[kind] = {"sinks": [n for n, share in shares.items() if share > SINK_SHARE], "shares": shares}
    return out
