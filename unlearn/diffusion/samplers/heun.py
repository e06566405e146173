"""Heun's second-order sampler (Karras et al. 2022, Algorithm 2; diffusers' HeunDiscreteScheduler).

Each step takes an Euler step to sigma_{i+1}, re-evaluates the slope there and averages the
two slopes (the trapezoidal rule). The last step, to sigma = 0, is a plain Euler step since
the slope at sigma = 0 is undefined; n steps cost 2n - 1 denoiser evaluations.
"""

from __future__ import annotations

from .base import to_d
from .euler import EulerSampler

__all__ = ["HeunSampler"]


class HeunSampler(EulerSampler):
    """Heun (EDM Alg. 2), with the same optional churn arguments as `EulerSampler`."""

    def step(self, denoiser, x, i, sigmas, cond, uc, state, *, noise_sampler=None):
        x_hat, sigma_hat = self.churn(x, i, sigmas, noise_sampler)
        sigma_next = sigmas[i + 1]
        denoised = self.denoise(denoiser, x_hat, sigma_hat, cond, uc)
        d = to_d(x_hat, sigma_hat, denoised)  # (B, C, H, W)
        x_euler = x_hat + d * (sigma_next - sigma_hat)
        if sigma_next == 0:
            self._record(state, i, denoised)
            return x_euler
        denoised_2 = self.denoise(denoiser, x_euler, sigma_next, cond, uc)
        self._record(state, i, denoised_2)
        d_prime = (d + to_d(x_euler, sigma_next, denoised_2)) / 2
        return x_hat + d_prime * (sigma_next - sigma_hat)
