"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12 and 16), in sigma space.

With abar = 1 / (1 + sigma^2), the DDPM latent x_t = x sqrt(abar) steps as

    x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s_t^2) eps + s_t z,
    s_t = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev),

and is mapped back with x = x_t / sqrt(abar). At eta = 0 this is x_next = x0 + sigma_next eps,
which is exactly the Euler step x + (sigma_next - sigma) (x - x0) / sigma
(Karras et al. 2022, Sec. 3), for eps and v models alike. Matches diffusers' DDIMScheduler
(set_alpha_to_one=True so the last step lands on sigma = 0) when its step ratio
T // n equals the gap between consecutive timesteps (e.g. trailing or leading, T = 1000, n = 10).

On a rectified-flow schedule (x = (1 - sigma) x0 + sigma eps) the deterministic DDIM update,
x_next = (1 - sigma_next) x0 + sigma_next eps with the same x0 and eps, is again the Euler step
(``FlowMatchEulerDiscreteScheduler``'s), so ``eta = 0`` samples flow models too; a stochastic
DDIM (eta > 0) is defined for the variance-preserving schedule only and is refused there.
"""

from __future__ import annotations

from .base import Sampler, default_noise_sampler, to_d

__all__ = ["DDIMSampler"]


class DDIMSampler(Sampler):
    """DDIM with stochasticity ``eta`` (0: deterministic; 1: DDPM-like ancestral sampling)."""

    def __init__(self, discretization_config, num_steps=None, guider_config=None, verbose=False, eta: float = 0.0):
        if eta < 0:
            raise ValueError(f"eta: expected >= 0, got {eta}")
        self.eta = eta  # read by supports_rectified_flow while the base class checks the schedule
        super().__init__(discretization_config, num_steps, guider_config, verbose)

    @property
    def supports_rectified_flow(self) -> bool:
        return self.eta == 0

    def step(self, denoiser, x, i, sigmas, cond, uc, state, *, noise_sampler=None):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = self.denoise(denoiser, x, sigma, cond, uc)
        self._record(state, i, denoised)
        if getattr(self.discretization, "rectified_flow", False):
            return x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        eps = (x - denoised) / sigma  # (B, C, H, W)
        abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        std = self.eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)) ** 0.5
        x_t_next = abar_next**0.5 * denoised + (1 - abar_next - std**2).clamp(min=0) ** 0.5 * eps
        if std > 0:
            noise = (noise_sampler or default_noise_sampler())(x, sigma, sigma_next)
            x_t_next = x_t_next + std * noise
        return x_t_next / abar_next**0.5
