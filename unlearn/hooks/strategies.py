"""Mask strategies: how learnable logits λ become a mask m applied to activations.

Every strategy maps λ (any shape, fp32) and, for stochastic ones, a uniform noise
tensor u ~ U(0, 1) of λ's shape to a mask m of λ's shape. Training-time masks may be
stochastic; ``deterministic`` gives the mask used outside training. A sample is a pure
function of (λ, u), so drawing u once per trajectory step and reusing it when the step
is recomputed reproduces the same mask (see `unlearn.engine.trajectory_checkpoint`).

* ``sigmoid``: m = σ(λ).
* ``hard_discrete``: the hard-concrete gate of Louizos, Welling & Kingma 2018 ("Learning
  Sparse Neural Networks through L0 Regularization", Sec. 4.2, Eq. 10-13):
  s = σ((log u - log(1 - u) + log α) / β), s̄ = s (ζ - γ) + γ, z = min(1, max(0, s̄)),
  with log α = λ, temperature β = 2/3 and stretch (γ, ζ) = (-0.1, 1.1). Exact zeros and
  ones occur with non-zero probability. At test time ẑ = min(1, max(0, σ(log α)(ζ - γ) + γ)).
* ``binary``: straight-through threshold (Bengio et al. 2013): the forward value is
  1[λ > τ], the gradient is that of σ(λ). τ = 0 unless a budget lowers it
  (`MaskManager.cap_off_share`: at most a given share of the units off, the lowest λ).
* ``continues2binary``: σ(λ) while training, like ``sigmoid``, but meant to be binarized
  after training (`unlearn.hooks.binarize`); the engine refuses to save it unbinarized.
* ``fixed``: m = λ as stored (inference with saved mask values; nothing to train).

``off_probability(λ)`` is each unit's expected share of being switched off, the quantity
the sparsity regulariser penalises: 1 - σ(λ) for the sigmoid-type strategies and
P(z = 0) = 1 - σ(log α - β log(-γ/ζ)) for the hard-concrete gate (Louizos et al. Eq. 12).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = [
    "MaskStrategy",
    "SigmoidMask",
    "HardConcreteMask",
    "StraightThroughBinaryMask",
    "ContinuousToBinaryMask",
    "FixedMask",
    "STRATEGIES",
    "build_strategy",
    "hard_concrete_sample",
    "hard_concrete_deterministic",
    "hard_concrete_prob_nonzero",
]


def hard_concrete_sample(
    log_alpha: torch.Tensor, u: torch.Tensor, beta: float, gamma: float, zeta: float
) -> torch.Tensor:
    """z = min(1, max(0, σ((log u - log(1-u) + log α) / β)(ζ - γ) + γ)); u ~ U(0, 1), shape of log α."""
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_deterministic(log_alpha: torch.Tensor, gamma: float, zeta: float) -> torch.Tensor:
    """Test-time gate ẑ = min(1, max(0, σ(log α)(ζ - γ) + γ)) (Louizos et al. Eq. 13)."""
    return (torch.sigmoid(log_alpha) * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_prob_nonzero(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """P(z ≠ 0) = σ(log α - β log(-γ/ζ)), the expected L0 norm per gate (Louizos et al. Eq. 12)."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


class MaskStrategy(ABC):
    """λ (fp32) and, when ``stochastic``, u ~ U(0, 1) -> mask m of λ's shape."""

    name: str = ""
    stochastic: bool = False
    trainable: bool = True
    # Whether a mask trained with this strategy must be binarized before it is saved.
    requires_binarization: bool = False

    @abstractmethod
    def sample(self, lam: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Training-time mask; ``u`` is the noise of a stochastic strategy (else ignored)."""

    @abstractmethod
    def deterministic(self, lam: torch.Tensor) -> torch.Tensor:
        """The mask used outside training (evaluation, image logging, saving)."""

    def off_probability(self, lam: torch.Tensor) -> torch.Tensor:
        """Per unit, the expected share of the unit being switched off, in [0, 1]."""
        return 1.0 - torch.sigmoid(lam)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SigmoidMask(MaskStrategy):
    name = "sigmoid"

    def sample(self, lam, u):
        return torch.sigmoid(lam)

    def deterministic(self, lam):
        return torch.sigmoid(lam)


class ContinuousToBinaryMask(SigmoidMask):
    name = "continues2binary"
    requires_binarization = True


class StraightThroughBinaryMask(MaskStrategy):
    """``threshold`` τ <= 0: units with λ <= τ are off (0 by default).

    ``max_off_share``: at most this share of all masked units is off in every training forward
    (the lowest λ; `MaskManager.apply_off_budget` lowers τ before each step). Set it to the
    binarization's ``off_ratio`` with global binarization and training optimises the very masks
    that are saved. None: no cap.
    """

    name = "binary"

    def __init__(self, threshold: float = 0.0, max_off_share: float | None = None):
        if threshold > 0:
            raise ValueError(f"threshold: must be <= 0 (a unit with λ <= 0 is always off), got {threshold}")
        if max_off_share is not None and (
            isinstance(max_off_share, bool)
            or not isinstance(max_off_share, (int, float))
            or not 0.0 <= max_off_share < 1.0
        ):
            raise ValueError(f"max_off_share: expected a share in [0, 1) or null, got {max_off_share!r}")
        self.threshold = float(threshold)
        self.max_off_share = None if max_off_share is None else float(max_off_share)

    def sample(self, lam, u):
        soft = torch.sigmoid(lam)
        # forward: exactly 1[λ > τ]; backward: dσ(λ)/dλ (soft - soft.detach() is exactly 0).
        return (lam > self.threshold).to(lam.dtype) + (soft - soft.detach())

    def deterministic(self, lam):
        return (lam > self.threshold).to(lam.dtype)


class HardConcreteMask(MaskStrategy):
    """Hard-concrete gates; ``beta`` is the temperature, (``gamma``, ``zeta``) the stretch."""

    name = "hard_discrete"
    stochastic = True

    def __init__(self, beta: float = 2.0 / 3.0, gamma: float = -0.1, zeta: float = 1.1):
        if not beta > 0:
            raise ValueError(f"hard_discrete: beta (temperature) must be > 0, got {beta}")
        if not (gamma < 0 and zeta > 1):
            raise ValueError(f"hard_discrete: need gamma < 0 < 1 < zeta for exact zeros and ones, got {gamma}, {zeta}")
        self.beta, self.gamma, self.zeta = float(beta), float(gamma), float(zeta)

    def sample(self, lam, u):
        if u is None:
            raise ValueError("hard_discrete: a training-time mask needs its noise u; call MaskManager.resample first")
        return hard_concrete_sample(lam, u.to(lam.dtype), self.beta, self.gamma, self.zeta)

    def deterministic(self, lam):
        return hard_concrete_deterministic(lam, self.gamma, self.zeta)

    def off_probability(self, lam):
        return 1.0 - hard_concrete_prob_nonzero(lam, self.beta, self.gamma, self.zeta)

    def __repr__(self) -> str:
        return f"HardConcreteMask(beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta})"


class FixedMask(MaskStrategy):
    """Stored mask values used as they are (inference with a saved, usually binary, mask)."""

    name = "fixed"
    trainable = False

    def sample(self, lam, u):
        return lam

    def deterministic(self, lam):
        return lam

    def off_probability(self, lam):
        return 1.0 - lam


STRATEGIES: dict[str, type[MaskStrategy]] = {
    cls.name: cls
    for cls in (SigmoidMask, HardConcreteMask, StraightThroughBinaryMask, ContinuousToBinaryMask, FixedMask)
}


def build_strategy(strategy: str | dict | MaskStrategy, path: str = "strategy") -> MaskStrategy:
    """A strategy from its short name (``"hard_discrete"``), a ``target``/``params`` block or itself."""
    if isinstance(strategy, MaskStrategy):
        return strategy
    if isinstance(strategy, dict):
        from unlearn.config import instantiate_from_config

        built = instantiate_from_config(strategy, _path=path)
        if not isinstance(built, MaskStrategy):
            raise ValueError(f"{path}: {type(built).__name__} is not a MaskStrategy")
        return built
    if strategy not in STRATEGIES:
        raise ValueError(
            f"{path}: unknown mask strategy {strategy!r}; choose one of {sorted(STRATEGIES)} or give a target block"
        )
    return STRATEGIES[strategy]()
