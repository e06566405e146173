"""Per-noise-level weights lambda(sigma) of the x0-space loss lambda ||D(x, sigma) - x0||^2.

Karras et al. 2022, Eq. 8 and Table 1: with `EDMWeighting`, lambda = (sigma^2 + sd^2) /
(sigma sd)^2 = 1 / c_out^2 makes the effective network target unit-variance. `VWeighting` is
the same with sd = 1 (the v-prediction MSE, Salimans & Ho 2022). `EpsWeighting`,
lambda = sigma^-2, turns the x0 loss of an eps model into the usual eps MSE of
Ho et al. 2020 (since D - x0 = sigma (eps - eps_hat) under `EpsScaling`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["LossWeighting", "UnitWeighting", "EDMWeighting", "VWeighting", "EpsWeighting"]


class LossWeighting(ABC):
    """Contract: ``weighting(sigma) -> lambda(sigma)`` of sigma's shape."""

    @abstractmethod
    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma: any shape -> weights, same shape."""


class UnitWeighting(LossWeighting):
    """lambda = 1 (plain x0 MSE)."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)


class EDMWeighting(LossWeighting):
    """lambda = (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022, Table 1)."""

    def __init__(self, sigma_data: float = 0.5):
        if sigma_data <= 0:
            raise ValueError(f"sigma_data: expected a positive number, got {sigma_data}")
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class VWeighting(EDMWeighting):
    """lambda = (sigma^2 + 1) / sigma^2: the v-prediction MSE written in x0 space."""

    def __init__(self):
        super().__init__(sigma_data=1.0)


class EpsWeighting(LossWeighting):
    """lambda = sigma^-2: the eps MSE of Ho et al. 2020 written in x0 space."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma**-2.0
