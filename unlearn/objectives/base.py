"""The call shape every erasure objective shares.

An objective compares a trainable model (the *student*) with its frozen original (the
*teacher*) on noisy latents. Both are given as eps predictors
``eps(x, sigma, cond) -> (B, C, H, W)`` (``Denoiser.predict_eps`` bound to a network), so
objectives work on eps-, v- and x0-parameterised models alike. The engine builds an
`ErasureBatch` of latents and condition dicts; the objective returns the loss and the
values to log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = ["EpsFn", "Cond", "ErasureBatch", "ObjectiveOutput", "ErasureObjective", "cat_conds", "repeat_batch"]

Cond = Mapping[str, Any]
EpsFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


@dataclass
class ErasureBatch:
    """Inputs of one training step; every condition dict has batch size B.

    Attributes:
        x: (B, C, H, W) noisy latents in sigma space (x = x0 + sigma * eps).
        sigma: (B,) their noise levels.
        concept: c, the prompt of the concept being erased.
        null: the empty prompt (the unconditional branch).
        erase_from: c_from when the concept is erased *from* another prompt, else None.
        preserve: a prompt to keep unchanged, else None.
        preserve_x, preserve_sigma: (B, C, H, W) and (B,), the latents the preserve prompt is
            checked on when they come from its own trajectories; None: on ``x`` and ``sigma``.
    """

    x: torch.Tensor
    sigma: torch.Tensor
    concept: Cond
    null: Cond
    erase_from: Cond | None = None
    preserve: Cond | None = None
    preserve_x: torch.Tensor | None = None
    preserve_sigma: torch.Tensor | None = None


@dataclass
class ObjectiveOutput:
    """``loss``: a scalar with grad; ``logs``: detached scalars, e.g. ``{"loss_erase": ...}``."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class ErasureObjective(ABC):
    """Contract: ``objective(student, teacher, batch) -> ObjectiveOutput``.

    ``teacher`` is called without grad; ``student`` with grad. Implementations batch
    their prompts so each model runs once per step where possible.
    """

    @abstractmethod
    def __call__(self, student: EpsFn, teacher: EpsFn, batch: ErasureBatch) -> ObjectiveOutput: ...


def cat_conds(conds: Sequence[Cond]) -> dict[str, Any]:
    """Concatenate condition dicts along the batch: k dicts of (B, ...) -> one of (k B, ...).

    Keys must match; non-tensor values must be equal and are kept once.
    """
    if not conds:
        raise ValueError("cat_conds: no condition dicts given")
    if any(set(c) != set(conds[0]) for c in conds):
        raise ValueError(f"condition dicts have different keys: {[sorted(c) for c in conds]}")
    out: dict[str, Any] = {}
    for key, value in conds[0].items():
        values = [c[key] for c in conds]
        if torch.is_tensor(value):
            out[key] = torch.cat(values, dim=0)
        else:
            if any(v != value for v in values):
                raise ValueError(f"condition {key!r}: non-tensor values differ across prompts")
            out[key] = value
    return out


def repeat_batch(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, ...) -> (k B, ...): ``x`` stacked k times along the batch (matches `cat_conds` order)."""
    return x.repeat(k, *([1] * (x.ndim - 1)))
