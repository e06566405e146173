"""Minimalist concept erasure's loss (Zhang et al., ICML 2025), on final samples.

The masked model and the original model (the same network with its masks disabled) both
run the whole sampler from the same initial noise. With x̂ the masked model's final
latents and x the original's:

    L_erase    = MSE(x̂(p_concept), sg[x(p_deconcept)])   the concept prompt must give what
                                                         the prompt without it gives
    L_preserve = MSE(x̂(p_keep), sg[x(p_keep)])           other prompts must not change
    R_sparse   = mean over all masked units of P(unit off)
    L = L_erase + β L_preserve + w R_sparse

R_sparse keeps the edit minimal: it is the expected share of units switched off (per unit
1 - σ(λ) for sigmoid-type masks, the hard-concrete P(z = 0) = 1 - σ(log α - β' log(-γ/ζ))
of Louizos et al. 2018, Eq. 12), so only units whose removal pays off in the erase term
leave. The reference implementation defines such a term but never adds it to the loss;
here it is added with weight ``sparsity_weight`` (0 turns it off). The trajectory terms
are differentiated through the sampler by `unlearn.engine.trajectory_checkpoint`; the
regulariser depends on λ only and is differentiated directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.config import non_negative_number
from unlearn.hooks.manager import MaskManager
from unlearn.objectives.base import ObjectiveOutput, TrajectoryObjective

__all__ = ["MinimalistObjective"]


class MinimalistObjective(TrajectoryObjective):
    """Erase + β·preserve on final latents, and the sparsity regulariser on the masks.

    Args:
        beta: weight β of the preserve term.
        sparsity_weight: weight w of R_sparse (the expected share of units switched off).
    """

    def __init__(self, beta: float = 1.0, sparsity_weight: float = 0.1):
        self.beta = non_negative_number(beta, "beta")
        self.sparsity_weight = non_negative_number(sparsity_weight, "sparsity_weight")

    def trajectory_loss(self, x_masked: torch.Tensor, x_target: torch.Tensor, n_erase: int) -> ObjectiveOutput:
        """x_masked, x_target: (n_erase + n_keep, C, H, W); the first ``n_erase`` rows are the
        concept prompts (targets: their deconcept prompts), the rest keep prompts."""
        if x_masked.shape != x_target.shape:
            raise ValueError(f"x_masked {tuple(x_masked.shape)} and x_target {tuple(x_target.shape)} differ")
        if not 0 <= n_erase <= x_masked.shape[0]:
            raise ValueError(f"n_erase must lie in [0, {x_masked.shape[0]}], got {n_erase}")
        target = x_target.detach().to(x_masked.dtype)
        zero = x_masked.new_zeros(())
        erase = F.mse_loss(x_masked[:n_erase], target[:n_erase]) if n_erase else zero
        keep = x_masked.shape[0] - n_erase
        preserve = F.mse_loss(x_masked[n_erase:], target[n_erase:]) if keep else zero
        loss = erase + self.beta * preserve
        return ObjectiveOutput(loss, {"loss_erase": erase.detach(), "loss_preserve": preserve.detach()})

    def regulariser(self, manager: MaskManager) -> torch.Tensor:
        """w · R_sparse (a scalar with grad into every λ)."""
        return self.sparsity_weight * manager.expected_off_share()
