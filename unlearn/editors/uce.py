"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024).

Every cross-attention key and value projection W (out, D) reads the text embeddings c (D,) of
the prompt. UCE replaces W, in closed form, by the minimiser of

    s_e Σ_i ||W' c_i - v_i*||^2  +  s_p Σ_j ||W' c_j - W c_j||^2  +  λ ||W' - W||_F^2

over erased rows c_i (with targets v_i* = W c_i^tgt, the original output for the guide / anchor
prompt's row) and preserved rows c_j (kept at their original outputs), i.e. (the paper's Eq. 7
with the official code's regulariser λ, ``lamb``):

    W' = (λ W + s_e Σ_i v_i* c_i^T + s_p Σ_j W c_j c_j^T) (λ I + s_e Σ_i c_i c_i^T + s_p Σ_j c_j c_j^T)^-1

s_e = ``erase_scale``, s_p = ``preserve_scale``. With λ = 0 and no preserved rows, W' maps every
erased row exactly onto its target when the rows span the embedding space (a solvable system).

Which token rows (``token_rows``), following the official code:

* ``from_last`` (default; ``train-scripts/train_erase.py``, the WACV paper's code): an erased
  prompt contributes its last word token and every row after it (end token, padding), paired row
  by row with its target prompt's rows from the target's last word token on, both cut to the same
  length (L - the later of the two last-word indices); a preserved prompt contributes all L rows.
  The empty target "" starts at its start token. CLIP's text encoder is causal, so these are the
  rows that carry the whole prompt.
* ``last`` (``trainscripts/uce_sd_erase.py``, 2024): one row per prompt, its last word token
  (the start token for "").

Official defaults: λ = 0.5 and s_e = 1 in both scripts; s_p = 0.1 (``train_erase.py``, which
preserves the empty prompt when given no preserve list) or 1 (``uce_sd_erase.py``); targets:
the empty prompt (objects) or "art" (artists). Only the "replace" technique (targets are the
guide prompt's outputs) is implemented, not ``train_erase.py``'s "tensor" variant. Solved in
float64 with one Cholesky factorisation per embedding width (the right-hand matrix does not
depend on W).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from unlearn.config import non_negative_number
from unlearn.editors.base import EditOutput, EditPrompts, TextEncoder, TextRows, WeightEditor

__all__ = ["TOKEN_ROWS", "aligned_rows", "preserved_rows", "uce_gram", "uce_weight", "UCEEditor"]

TOKEN_ROWS: tuple[str, ...] = ("from_last", "last")


def aligned_rows(erase: TextRows, target: TextRows, token_rows: str = "from_last") -> tuple[torch.Tensor, torch.Tensor]:
    """(c_erase, c_target), each (N, D): the erased prompts' rows and their targets' rows, paired."""
    rows_e, rows_t = [], []
    length = erase.rows.shape[1]
    for i in range(erase.rows.shape[0]):
        a, b = int(erase.last[i]), int(target.last[i])
        n = 1 if token_rows == "last" else length - max(a, b)  # rows from the last word token on
        rows_e.append(erase.rows[i, a : a + n])
        rows_t.append(target.rows[i, b : b + n])
    return torch.cat(rows_e), torch.cat(rows_t)


def preserved_rows(keep: TextRows, token_rows: str = "from_last") -> torch.Tensor:
    """(M, D): every row of each preserved prompt (``from_last``) or its last word token's (``last``)."""
    if token_rows == "last":
        return keep.rows[torch.arange(keep.rows.shape[0]), keep.last.to(keep.rows.device)]
    return keep.rows.flatten(0, 1)


def uce_gram(
    c_erase: torch.Tensor, c_preserve: torch.Tensor | None, erase_scale: float, preserve_scale: float, lamb: float
) -> torch.Tensor:
    """(D, D) float64: λ I + s_e Σ c_i c_i^T + s_p Σ c_j c_j^T; c_erase: (N, D), c_preserve: (M, D)."""
    c_e = c_erase.double()
    gram = lamb * torch.eye(c_e.shape[1], dtype=torch.float64, device=c_e.device) + erase_scale * c_e.T @ c_e
    if c_preserve is not None and preserve_scale > 0:
        c_p = c_preserve.double()
        gram = gram + preserve_scale * c_p.T @ c_p
    return gram


def _cholesky(gram: torch.Tensor, lamb: float) -> torch.Tensor:
    """The Cholesky factor of the gram matrix; without the regulariser, a rank-deficient one is refused."""
    factor, info = torch.linalg.cholesky_ex(gram)
    rank = gram.shape[0] if lamb > 0 and int(info) == 0 else int(torch.linalg.matrix_rank(gram))
    if int(info) != 0 or rank < gram.shape[0]:
        raise ValueError(
            f"lamb: the erased and preserved rows span {rank} of the {gram.shape[0]} embedding dimensions, so "
            "the system is singular without the regulariser; use lamb > 0 (the official 0.5)"
        )
    return factor


def uce_weight(
    weight: torch.Tensor,
    c_erase: torch.Tensor,
    v_target: torch.Tensor,
    c_preserve: torch.Tensor | None = None,
    erase_scale: float = 1.0,
    preserve_scale: float = 0.1,
    lamb: float = 0.5,
    cholesky: torch.Tensor | None = None,
) -> torch.Tensor:
    """W' (the module docstring's formula), in ``weight``'s dtype.

    weight: (O, D) W; c_erase: (N, D); v_target: (N, O) the targets W c_i^tgt; c_preserve: (M, D)
    or None; cholesky: the factor of `uce_gram` (computed here if None).
    """
    W = weight.double()
    numerator = lamb * W + erase_scale * v_target.double().T @ c_erase.double()  # (O, D)
    if c_preserve is not None and preserve_scale > 0:
        c_p = c_preserve.double()
        numerator = numerator + preserve_scale * (W @ c_p.T) @ c_p
    if cholesky is None:
        cholesky = _cholesky(uce_gram(c_erase, c_preserve, erase_scale, preserve_scale, lamb), lamb)
    # W' = numerator gram^-1, i.e. (gram^-1 numerator^T)^T since the gram matrix is symmetric
    return torch.cholesky_solve(numerator.T, cholesky).T.to(weight.dtype)


def _relative(error: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return error.norm() / reference.norm().clamp_min(1e-12)


class UCEEditor(WeightEditor):
    """UCE's closed-form edit of every weight it is given (see the module docstring).

    Args:
        erase_scale: s_e, the weight of the erased rows.
        preserve_scale: s_p, the weight of the preserved rows.
        lamb: λ, the pull towards the original W (0: none; then the rows must span the embedding).
        token_rows: ``from_last`` (``train_erase.py``) or ``last`` (``uce_sd_erase.py``).
    """

    name = "uce"

    def __init__(
        self, erase_scale: float = 1.0, preserve_scale: float = 0.1, lamb: float = 0.5, token_rows: str = "from_last"
    ):
        if token_rows not in TOKEN_ROWS:
            raise ValueError(f"token_rows: expected one of {list(TOKEN_ROWS)}, got {token_rows!r}")
        self.erase_scale = non_negative_number(erase_scale, "erase_scale")
        if self.erase_scale == 0:
            raise ValueError("erase_scale: expected a number > 0 (0 erases nothing)")
        self.preserve_scale = non_negative_number(preserve_scale, "preserve_scale")
        self.lamb = non_negative_number(lamb, "lamb")
        self.token_rows = token_rows

    def __call__(self, weights: Mapping[str, torch.Tensor], encode: TextEncoder, prompts: EditPrompts) -> EditOutput:
        c_erase, c_target = aligned_rows(encode(prompts.erase), encode(prompts.target), self.token_rows)  # (N, D)
        c_keep = preserved_rows(encode(prompts.preserve), self.token_rows) if prompts.preserve else None  # (M, D)
        width = c_erase.shape[1]
        factors: dict[torch.device, torch.Tensor] = {}
        edited, residual, drift = {}, [], []
        for name, W in weights.items():
            if W.ndim != 2 or W.shape[1] != width:
                raise ValueError(
                    f"selector_config: {name} has shape {tuple(W.shape)}; UCE edits projections of the "
                    f"{width}-wide text embedding (out, {width}), e.g. train_method esd-x-strict"
                )
            device = W.device
            if device not in factors:
                gram = uce_gram(c_erase.to(device), None if c_keep is None else c_keep.to(device), *self._scales())
                factors[device] = _cholesky(gram, self.lamb)
            c_e, c_t = c_erase.to(device, torch.float64), c_target.to(device, torch.float64)
            c_p = None if c_keep is None else c_keep.to(device, torch.float64)
            W64 = W.double()
            v_target = c_t @ W64.T  # (N, O): the original outputs of the target rows
            new = uce_weight(W, c_e, v_target, c_p, *self._scales(), cholesky=factors[device])
            edited[name] = new
            residual.append(_relative(c_e @ new.double().T - v_target, v_target))
            if c_p is not None:
                drift.append(_relative(c_p @ (new.double() - W64).T, c_p @ W64.T))
        logs = {"erase_residual": torch.stack(residual).mean().float()}
        if drift:
            logs["preserve_drift"] = torch.stack(drift).mean().float()
        return EditOutput(weights=edited, logs=logs)

    def _scales(self) -> tuple[float, float, float]:
        return self.erase_scale, self.preserve_scale, self.lamb

    def metadata(self) -> dict[str, Any]:
        return {
            "erase_scale": self.erase_scale,
            "preserve_scale": self.preserve_scale,
            "lamb": self.lamb,
            "token_rows": self.token_rows,
        }
