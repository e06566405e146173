"""Guiders: how conditional and unconditional predictions are combined during sampling.

A sampler calls ``x_in, sigma_in, cond_in = guider.prepare_inputs(x, sigma, cond, uc)``,
evaluates the denoiser once on the (possibly doubled) batch, and returns
``guider(x0_pred, sigma)``.

Classifier-free guidance (Ho & Salimans 2022, Eq. 6), in x0 space:
D = D(x | uc) + s (D(x | c) - D(x | uc)). A negative prompt is simply the ``uc`` built from
the negative prompt text instead of the empty prompt; nothing else changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Guider", "IdentityGuider", "VanillaCFG", "NegatedConceptCFG", "concat_cond"]

Cond = Mapping[str, Any]


def concat_cond(uc: Cond, c: Cond) -> dict[str, Any]:
    """Batch two condition dicts as [uc, c]: tensors are concatenated along dim 0.

    Keys must match; a non-tensor value (e.g. a flag) must be equal in both and is kept.
    uc[k]: (B, ...), c[k]: (B, ...) -> (2B, ...).
    """
    if set(uc) != set(c):
        raise ValueError(f"uc: keys {sorted(uc)} differ from the cond keys {sorted(c)}")
    out: dict[str, Any] = {}
    for key in c:
        if torch.is_tensor(c[key]):
            if not torch.is_tensor(uc[key]) or uc[key].shape[1:] != c[key].shape[1:]:
                got = tuple(uc[key].shape) if torch.is_tensor(uc[key]) else type(uc[key]).__name__
                raise ValueError(f"uc[{key!r}]: expected a tensor shaped like {tuple(c[key].shape)}, got {got}")
            out[key] = torch.cat([uc[key], c[key]], dim=0)
        else:
            if uc[key] != c[key]:
                raise ValueError(f"uc[{key!r}]: non-tensor entries must equal cond[{key!r}]")
            out[key] = c[key]
    return out


class Guider(ABC):
    """Contract: ``prepare_inputs(x, sigma, cond, uc)`` then ``guider(x0_pred, sigma) -> x0``."""

    @abstractmethod
    def prepare_inputs(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond | None
    ) -> tuple[torch.Tensor, torch.Tensor, Cond]:
        """x: (B, ...), sigma: (B,) -> the batch the denoiser is evaluated on."""

    @abstractmethod
    def __call__(self, x0_pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The denoiser output on the prepared batch -> the guided x0: (B, ...)."""

    def branches(self) -> tuple[str, ...] | None:
        """The conditions of the prepared batch, in order, each B rows of the same x and sigma
        (``"cond"``, ``"uc"``, ...); None where the batch is not laid out that way. Lets a caller
        read the unguided predictions back from the denoiser's output."""
        return None


class IdentityGuider(Guider):
    """No guidance: the conditional prediction as is; ``uc`` is ignored."""

    def prepare_inputs(self, x, sigma, cond, uc):
        return x, sigma, cond

    def __call__(self, x0_pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0_pred

    def branches(self) -> tuple[str, ...]:
        return ("cond",)


class VanillaCFG(Guider):
    """Classifier-free guidance with a constant scale (Ho & Salimans 2022).

    The batch is evaluated as [uc, c] in one call. ``scale == 1`` is the conditional
    prediction exactly, so the unconditional half is skipped.
    """

    def __init__(self, scale: float):
        self.scale = float(scale)

    def prepare_inputs(self, x, sigma, cond, uc):
        if self.scale == 1.0:
            return x, sigma, cond
        if uc is None:
            raise ValueError(f"uc: VanillaCFG(scale={self.scale}) needs unconditional inputs, got None")
        x_in = torch.cat([x, x], dim=0)  # (2B, ...)
        sigma_in = torch.cat([sigma, sigma], dim=0)  # (2B,)
        return x_in, sigma_in, concat_cond(uc, cond)

    def __call__(self, x0_pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x0_pred
        x0_uncond, x0_cond = x0_pred.chunk(2, dim=0)  # each (B, ...)
        return x0_uncond + self.scale * (x0_cond - x0_uncond)

    def branches(self) -> tuple[str, ...]:
        return ("cond",) if self.scale == 1.0 else ("uc", "cond")


class NegatedConceptCFG(Guider):
    """Classifier-free guidance that also steers away from a concept, the "NOT" of
    composable diffusion (Liu et al., ECCV 2022, Eq. 13), in x0 space:

        D = D(x | uc) + s (D(x | c) - D(x | uc)) - s_n (D(x | n) - D(x | uc))

    Unlike a negative prompt (``uc`` replaced by n, i.e. s_n = s - 1 with no empty branch),
    the prompt keeps its plain guidance and only the concept's own direction is removed at
    its own scale. ``uc`` carries both branches stacked as [empty rows; negated-concept
    rows], 2B rows for a batch of B; the batch is evaluated as [uc, n, c] in one call.
    """

    def __init__(self, scale: float, negation_scale: float):
        self.scale, self.negation_scale = float(scale), float(negation_scale)

    @staticmethod
    def stack_uc(uc: Cond, negated: Cond) -> dict[str, Any]:
        """The ``uc`` this guider reads: empty rows (B) then negated-concept rows (B)."""
        return {k: torch.cat([v, negated[k]]) for k, v in uc.items()}

    def prepare_inputs(self, x, sigma, cond, uc):
        b = x.shape[0]
        if uc is None or any(torch.is_tensor(v) and v.shape[0] != 2 * b for v in uc.values()):
            raise ValueError(
                f"uc: NegatedConceptCFG needs the empty and the negated-concept branches stacked (2 x {b} rows)"
            )
        return torch.cat([x] * 3, dim=0), torch.cat([sigma] * 3, dim=0), concat_cond(uc, cond)

    def __call__(self, x0_pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0_uncond, x0_neg, x0_cond = x0_pred.chunk(3, dim=0)  # each (B, ...)
        return x0_uncond + self.scale * (x0_cond - x0_uncond) - self.negation_scale * (x0_neg - x0_uncond)

    def branches(self) -> tuple[str, ...]:
        return ("uc", "negated", "cond")
