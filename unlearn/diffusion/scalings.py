"""Preconditioning: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, Eq. 7).

Each scaling maps sigma to (c_skip, c_out, c_in, c_noise), all of sigma's shape, so that a
network F trained with one parameterization yields the x0 estimate D:

=========================  ==================  =======================  ==================  ===============
scaling                    c_skip              c_out                    c_in                c_noise
=========================  ==================  =======================  ==================  ===============
`EpsScaling` (DDPM eps)    1                   -sigma                   1/sqrt(sigma^2+1)   sigma
`VScaling` (v-prediction)  1/(sigma^2+1)       -sigma/sqrt(sigma^2+1)   1/sqrt(sigma^2+1)   sigma
`EDMScaling`               sd^2/(sigma^2+sd^2) sigma sd/sqrt(s^2+sd^2)  1/sqrt(sigma^2+sd^2) log(sigma)/4
`FlowScaling` (velocity)   1                   -sigma                   1                   T sigma
=========================  ==================  =======================  ==================  ===============

(Karras et al. 2022, Table 1; sd = sigma_data.) `FlowScaling` is for rectified-flow models
(x = (1 - sigma) x0 + sigma eps, `FlowMatchDiscretization`) that predict the velocity
v = eps - x0 at timestep T sigma (SD3, Flux): x0 = x - sigma v. For eps and v models c_noise is sigma
itself: `DiscreteDenoiser` turns it into the DDPM timestep the network was trained on.
c_in = 1/sqrt(1+sigma^2) is exactly diffusers' ``scale_model_input`` for Euler-type schedulers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["Scaling", "EpsScaling", "VScaling", "EDMScaling", "VScalingWithEDMcNoise", "FlowScaling"]

ScalingOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Scaling(ABC):
    """Contract: ``scaling(sigma) -> (c_skip, c_out, c_in, c_noise)``, each of sigma's shape."""

    @abstractmethod
    def __call__(self, sigma: torch.Tensor) -> ScalingOutput:
        """sigma: any shape (usually (B,) or (B, 1, 1, 1))."""


class EpsScaling(Scaling):
    """The network predicts the noise eps: D = x - sigma * F(x / sqrt(sigma^2 + 1))."""

    def __call__(self, sigma: torch.Tensor) -> ScalingOutput:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1.0) ** 0.5
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class VScaling(Scaling):
    """The network predicts v = (eps - sigma x0) / sqrt(1 + sigma^2) (Salimans & Ho 2022)."""

    def __call__(self, sigma: torch.Tensor) -> ScalingOutput:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class EDMScaling(Scaling):
    """The EDM preconditioning of Karras et al. 2022, Table 1 (column "ours")."""

    def __init__(self, sigma_data: float = 0.5):
        if sigma_data <= 0:
            raise ValueError(f"sigma_data: expected a positive number, got {sigma_data}")
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> ScalingOutput:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


class VScalingWithEDMcNoise(VScaling):
    """`VScaling` with EDM's continuous noise input c_noise = log(sigma) / 4 (SDXL-style v models)."""

    def __call__(self, sigma: torch.Tensor) -> ScalingOutput:
        c_skip, c_out, c_in, _ = super().__call__(sigma)
        return c_skip, c_out, c_in, 0.25 * sigma.log()


class FlowScaling(Scaling):
    """Rectified flow's velocity v = eps - x0, at timestep ``num_train_timesteps`` sigma: D = x - sigma v.

    Then (x - D) / sigma, what Euler and Heun step with, is v itself, so they integrate the flow
    ODE dx/dsigma = v (diffusers' ``FlowMatchEulerDiscreteScheduler``).
    """

    def __init__(self, num_train_timesteps: int = 1000):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps: expected a positive integer, got {num_train_timesteps!r}")
        self.num_train_timesteps = num_train_timesteps

    def __call__(self, sigma: torch.Tensor) -> ScalingOutput:
        return torch.ones_like(sigma), -sigma, torch.ones_like(sigma), self.num_train_timesteps * sigma
