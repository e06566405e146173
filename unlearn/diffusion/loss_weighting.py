"""Per-noise-level weights lambda(sigma) of the x0-space loss lambda ||D(x, sigma) - x0||^2.

Karras et al. 2022, Eq. 8 and Table 1: with `EDMWeighting`, lambda = (sigma^2 + sd^2) /
(sigma sd)^2 = 1 / c_out^2 makes the effective network target unit-variance. `VWeighting` is
the same with sd = 1 (the v-prediction MSE, Salimans & Ho 2022). `EpsWeighting`,
lambda = sigma^-2, turns the x0 loss of an eps model into the usual eps MSE of
Ho et al. 2020 (since D - x0 = sigma (eps - eps_hat) under `EpsScaling`).

For rectified flow (`unlearn.diffusion.loss.FlowMatchingLoss`) the weights multiply the velocity
MSE ||v_hat - (eps - x0)||^2 instead: `UnitWeighting` is SD3's default (its logit-normal timestep
density already weighs the trajectory), `CosMapWeighting` the "cosmap" weighting of Esser et al.
2024 (Eq. 21), and `EpsWeighting` (sigma^-2) diffusers' "sigma_sqrt".
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = ["LossWeighting", "UnitWeighting", "EDMWeighting", "VWeighting", "EpsWeighting", "CosMapWeighting"]


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


class CosMapWeighting(LossWeighting):
    """lambda = 2 / (pi (1 - 2 sigma + 2 sigma^2)) for rectified flow's velocity loss (Esser et al.
    2024, Eq. 21, "cosmap"; diffusers' ``compute_loss_weighting_for_sd3``): 2/pi at sigma = 0 and 1,
    4/pi at sigma = 1/2."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
