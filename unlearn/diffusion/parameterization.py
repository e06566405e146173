"""Conversions between the eps, x0 and v parameterizations, in sigma space.

Convention (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Eq. 1-2; k-diffusion / sgm): a noisy sample is

    x = x0 + sigma * eps,            eps ~ N(0, I)                      (variance exploding)

A DDPM model (Ho et al. 2020) with cumulative product abar_t sees instead

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,   with  sigma_t = sqrt((1 - abar_t) / abar_t),

so x_t = x / sqrt(1 + sigma^2) (`to_ddpm_latent`). The v target of Salimans & Ho 2022
("Progressive Distillation", Sec. 4), v = alpha_t * eps - sigma_vp * x0 with
alpha_t = sqrt(abar_t) = 1 / sqrt(1 + sigma^2) and sigma_vp = sigma / sqrt(1 + sigma^2), reads

    v = (eps - sigma * x0) / sqrt(1 + sigma^2).

Every function takes ``sigma`` as a Python number, a 0-dim tensor or a per-sample
tensor of shape (B,); it is broadcast against ``x`` with `append_dims`. None of them
modifies its inputs.
"""

from __future__ import annotations

import torch

__all__ = [
    "append_dims",
    "as_sigma",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_eps_x0",
    "x0_from_v",
    "eps_from_v",
    "v_from_x_x0",
    "to_ddpm_latent",
    "from_ddpm_latent",
    "sigma_from_alphas_cumprod",
    "alphas_cumprod_from_sigma",
]


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so ``t`` has ``ndim`` dimensions.

    t: (B,) -> (B, 1, ..., 1); a view, no copy.
    """
    missing = ndim - t.ndim
    if missing < 0:
        raise ValueError(f"append_dims: ndim={ndim} is smaller than the tensor's {t.ndim} dimensions")
    return t[(...,) + (None,) * missing]


def as_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma`` as a tensor broadcastable against ``x``: (), or (B, 1, ..., 1)."""
    if not torch.is_tensor(sigma):
        return torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    sigma = sigma.to(device=x.device, dtype=x.dtype if x.is_floating_point() else sigma.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim != 1 or sigma.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"sigma: expected a number, a 0-dim tensor or shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return append_dims(sigma, x.ndim)


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x0 = x - sigma * eps (Karras et al. 2022, Eq. 2 solved for x0). x, eps: (B, ...)."""
    return x - as_sigma(sigma, x) * eps


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """eps = (x - x0) / sigma; undefined at sigma = 0. x, x0: (B, ...)."""
    return (x - x0) / as_sigma(sigma, x)


def v_from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """v = (eps - sigma * x0) / sqrt(1 + sigma^2) (Salimans & Ho 2022, Sec. 4, in sigma form)."""
    s = as_sigma(sigma, eps)
    return (eps - s * x0) / torch.sqrt(1 + s**2)


def x0_from_v(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x0 = x / (1 + sigma^2) - sigma * v / sqrt(1 + sigma^2) (the inverse of `v_from_eps_x0`)."""
    s = as_sigma(sigma, x)
    return x / (1 + s**2) - s * v / torch.sqrt(1 + s**2)


def eps_from_v(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """eps = sigma * x / (1 + sigma^2) + v / sqrt(1 + sigma^2); finite at sigma = 0."""
    s = as_sigma(sigma, x)
    return s * x / (1 + s**2) + v / torch.sqrt(1 + s**2)


def v_from_x_x0(x: torch.Tensor, x0: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """v from the noisy sample and the clean one: v_from_eps_x0((x - x0) / sigma, x0, sigma)."""
    return v_from_eps_x0(eps_from_x0(x, x0, sigma), x0, sigma)


def to_ddpm_latent(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """DDPM latent x_t = x / sqrt(1 + sigma^2) = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    return x / torch.sqrt(1 + as_sigma(sigma, x) ** 2)


def from_ddpm_latent(x_t: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Sigma-space sample x = x_t * sqrt(1 + sigma^2) (the inverse of `to_ddpm_latent`)."""
    return x_t * torch.sqrt(1 + as_sigma(sigma, x_t) ** 2)


def sigma_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t); same shape as the input."""
    return torch.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def alphas_cumprod_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """abar_t = 1 / (1 + sigma_t^2); same shape as the input."""
    return 1 / (1 + sigma**2)
