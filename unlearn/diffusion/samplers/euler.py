"""Euler samplers: first-order steps on the probability-flow ODE, optionally stochastic.

`EulerSampler` is Karras et al. 2022, Algorithm 2 with the second-order correction left
out (with ``s_churn = 0``: Algorithm 1's Euler step, diffusers' ``EulerDiscreteScheduler``).
`EulerAncestralSampler` takes the Euler step to sigma_down and adds fresh noise of std
sigma_up (k-diffusion's ``sample_euler_ancestral``, diffusers'
``EulerAncestralDiscreteScheduler`` at eta = 1).
"""

from __future__ import annotations

import math

import torch

from .base import Sampler, default_noise_sampler, to_d

__all__ = ["EulerSampler", "EulerAncestralSampler", "churn_gamma", "ancestral_step"]


def churn_gamma(sigma: torch.Tensor, n: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """gamma_i = min(S_churn / n, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0 (Karras et al. 2022, Alg. 2)."""
    if s_churn <= 0 or not s_tmin <= float(sigma) <= s_tmax:
        return 0.0
    return min(s_churn / n, math.sqrt(2.0) - 1.0)


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2.

    sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)): the
    DDPM posterior std at eta = 1 (Ho et al. 2020, Eq. 7, in sigma form).
    """
    if eta == 0:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


class EulerSampler(Sampler):
    """Euler (Karras et al. 2022, Alg. 2 without the Heun correction).

    With ``s_churn > 0`` noise is first added to raise sigma to sigma_hat = sigma (1 + gamma)
    and the denoiser is evaluated at sigma_hat (EDM's "churn"). Note diffusers' Euler with
    churn evaluates the model at sigma instead; only ``s_churn = 0`` matches it exactly. On a
    rectified-flow schedule (s_churn 0 only) the step is ``FlowMatchEulerDiscreteScheduler``'s.
    """

    supports_rectified_flow = True

    def __init__(
        self,
        discretization_config,
        num_steps=None,
        guider_config=None,
        verbose=False,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ):
        super().__init__(discretization_config, num_steps, guider_config, verbose)
        if s_churn < 0:
            raise ValueError(f"s_churn: expected >= 0, got {s_churn}")
        if s_churn > 0 and getattr(self.discretization, "rectified_flow", False):
            raise ValueError("s_churn: churn adds variance-exploding noise; a rectified-flow schedule needs s_churn 0")
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise

    def churn(self, x, i, sigmas, noise_sampler) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat, sigma_hat): x with extra noise so its level is sigma_hat (Alg. 2, lines 5-6)."""
        sigma = sigmas[i]
        gamma = churn_gamma(sigma, sigmas.shape[0] - 1, self.s_churn, self.s_tmin, self.s_tmax)
        if gamma == 0:
            return x, sigma
        sigma_hat = sigma * (gamma + 1)
        noise = (noise_sampler or default_noise_sampler())(x, sigma, sigma_hat)
        return x + noise * self.s_noise * (sigma_hat**2 - sigma**2) ** 0.5, sigma_hat

    def step(self, denoiser, x, i, sigmas, cond, uc, state, *, noise_sampler=None):
        x_hat, sigma_hat = self.churn(x, i, sigmas, noise_sampler)
        denoised = self.denoise(denoiser, x_hat, sigma_hat, cond, uc)
        self._record(state, i, denoised)
        return x_hat + to_d(x_hat, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)


class EulerAncestralSampler(Sampler):
    """Euler-ancestral: Euler to sigma_down, then noise of std s_noise * sigma_up (`ancestral_step`).

    eta = 0 is the deterministic Euler sampler; eta = 1 follows the DDPM posterior.
    """

    def __init__(
        self,
        discretization_config,
        num_steps=None,
        guider_config=None,
        verbose=False,
        eta: float = 1.0,
        s_noise: float = 1.0,
    ):
        super().__init__(discretization_config, num_steps, guider_config, verbose)
        if eta < 0:
            raise ValueError(f"eta: expected >= 0, got {eta}")
        self.eta, self.s_noise = eta, s_noise

    def step(self, denoiser, x, i, sigmas, cond, uc, state, *, noise_sampler=None):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = self.denoise(denoiser, x, sigma, cond, uc)
        self._record(state, i, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
        x_next = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and self.eta > 0:
            noise = (noise_sampler or default_noise_sampler())(x, sigma, sigma_next)
            x_next = x_next + noise * self.s_noise * sigma_up
        return x_next
