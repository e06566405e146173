"""Turn trained mask logits into binary masks after training.

``off_ratio`` is the share of masked units switched OFF (the sparsity of the edit; the
paper's targets are of the order of a few percent). Units are ranked by λ, which every
strategy maps monotonically to its mask (so the ranking is the mask's, without the ties
that saturated hard-concrete gates would give); the lowest-ranked are switched off.

* ``local``: in every masked module, exactly k = round(off_ratio · n) of its n units are
  switched off (ties broken by unit index).
* ``global``: one cut over all λ of the model: exactly k = round(off_ratio · N) of all N
  units are switched off, so layers that matter for the concept lose more units.
* ``threshold``: no ratio; a unit is off where its deterministic mask is below 0.5
  (λ < 0 for sigmoid and hard-concrete gates), i.e. where training left it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unlearn.hooks.manager import MaskManager

__all__ = ["BINARIZE_MODES", "Binarization", "binarize", "off_share"]

BINARIZE_MODES = ("local", "global", "threshold")


@dataclass
class Binarization:
    values: dict[str, torch.Tensor]  # {"group:module": 0/1 fp32 mask (units,)}
    mode: str
    off_ratio: float | None
    off_share: float  # share of all masked units switched off
    off_share_by_group: dict[str, float] = field(default_factory=dict)


def off_share(values: dict[str, torch.Tensor]) -> float:
    """Share of units whose mask is 0 over every mask in ``values``."""
    total = sum(v.numel() for v in values.values())
    return float(sum(int((v == 0).sum()) for v in values.values())) / max(total, 1)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 mask with the k lowest scores set to 0 (stable: the first index wins a tie)."""
    keep = torch.ones_like(scores)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = 0.0
    return keep


@torch.no_grad()
def binarize(manager: MaskManager, mode: str = "global", off_ratio: float | None = 0.05) -> Binarization:
    """Binary masks from ``manager``'s λ; see the module docstring for the modes."""
    if mode not in BINARIZE_MODES:
        raise ValueError(f"binarize.mode: expected one of {BINARIZE_MODES}, got {mode!r}")
    if mode != "threshold" and (off_ratio is None or not 0.0 <= float(off_ratio) < 1.0):
        raise ValueError(f"binarize.off_ratio: expected the share of units to switch off in [0, 1), got {off_ratio!r}")
    lams = {k: v.detach().float().cpu() for k, v in manager.masks().items()}
    if not lams:
        raise ValueError("binarize: the manager holds no masks")
    if mode == "local":
        values = {k: _lowest(lam, round(float(off_ratio) * lam.numel())) for k, lam in lams.items()}
    elif mode == "global":
        flat = torch.cat(list(lams.values()))
        keep = _lowest(flat, round(float(off_ratio) * flat.numel()))
        values = dict(zip(lams, torch.split(keep, [lam.numel() for lam in lams.values()])))
    else:
        det = {k: v.detach().float().cpu() for k, v in manager.mask_values(sample=False).items()}
        values = {k: (m >= 0.5).float() for k, m in det.items()}
        off_ratio = None
    by_group: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in values.items():
        by_group.setdefault(k.split(":", 1)[0], {})[k] = v
    return Binarization(
        values={k: v.clone() for k, v in values.items()},
        mode=mode,
        off_ratio=None if off_ratio is None else float(off_ratio),
        off_share=off_share(values),
        off_share_by_group={g: off_share(v) for g, v in by_group.items()},
    )
