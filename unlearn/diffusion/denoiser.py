"""Denoisers: compose a scaling and a network into the x0 estimate D(x, sigma).

D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), cond)
(Karras et al. 2022, Eq. 7). A network is any callable ``network(x_in, c_noise, cond)``
with x_in: (B, C, H, W), c_noise: (B,) and cond a dict of tensors.

Samplers expect ``denoiser(x, sigma, cond)``; bind the network with
``functools.partial(denoiser, network)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .parameterization import append_dims
from .utils import build

__all__ = ["Denoiser", "DiscreteDenoiser", "Network"]

Network = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]


def _batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a (B,) tensor in x's dtype and device; a number or 0-dim tensor is broadcast."""
    sigma = torch.as_tensor(sigma, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma: expected shape ({x.shape[0]},) to match x's batch, got {tuple(sigma.shape)}")
    return sigma.to(x.dtype)


def _eps(x: torch.Tensor, x0: torch.Tensor, sigma_q: torch.Tensor) -> torch.Tensor:
    """(x - x0) / sigma with the sigma (B,) the network saw."""
    return (x - x0) / append_dims(sigma_q, x.ndim)


class Denoiser(nn.Module):
    """D(x, sigma) from a scaling built from ``scaling_config`` (e.g. `EpsScaling`).

    Every ``*_config`` argument in this package takes a ``target``/``params`` block or an
    already built object.
    """

    def __init__(self, scaling_config: Mapping[str, Any]):
        super().__init__()
        self.scaling = build(scaling_config, "scaling_config")

    def quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The noise level the network is actually evaluated at; identity for continuous models."""
        return sigma

    def quantize_c_noise(self, c_noise: torch.Tensor) -> torch.Tensor:
        """The noise input the network receives; identity for continuous models."""
        return c_noise

    def forward(
        self, network: Network, x: torch.Tensor, sigma: torch.Tensor | float, cond: Mapping[str, Any]
    ) -> torch.Tensor:
        """x: (B, C, H, W), sigma: (B,) (or a number) -> x0 estimate (B, C, H, W)."""
        c_skip, c_out, c_in, c_noise = self._coefficients(x, sigma)
        return x * c_skip + network(x * c_in, c_noise, cond) * c_out

    def _coefficients(self, x: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in) each (B, 1, 1, 1) and the network's noise input c_noise (B,)."""
        sigma = self.quantize_sigma(_batch_sigma(sigma, x))  # (B,)
        c_skip, c_out, c_in, c_noise = self.scaling(append_dims(sigma, x.ndim))  # each (B, 1, 1, 1)
        c_noise = self.quantize_c_noise(c_noise.reshape(sigma.shape))  # (B,)
        return c_skip, c_out, c_in, c_noise

    def network_output(
        self, network: Network, x: torch.Tensor, sigma: torch.Tensor | float, cond: Mapping[str, Any]
    ) -> torch.Tensor:
        """F(c_in x, c_noise, cond), the network's own prediction (the velocity under `FlowScaling`),
        evaluated exactly as `forward` evaluates it; x: (B, C, H, W) -> (B, C, H, W)."""
        _, _, c_in, c_noise = self._coefficients(x, sigma)
        return network(x * c_in, c_noise, cond)

    def predict_eps(
        self, network: Network, x: torch.Tensor, sigma: torch.Tensor | float, cond: Mapping[str, Any]
    ) -> torch.Tensor:
        """eps estimate (x - D(x, sigma)) / sigma, for eps and v models alike; (B, C, H, W).

        The division uses the same (possibly quantized) sigma the network saw. sigma must be > 0.
        """
        sigma_q = self.quantize_sigma(_batch_sigma(sigma, x))  # (B,)
        return _eps(x, self(network, x, sigma_q, cond), sigma_q)

    def eps_from_x0(self, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The eps estimate of an x0 this denoiser made at (x, sigma), e.g. inside a sampler: what
        `predict_eps` returns for the same call; (B, C, H, W)."""
        return _eps(x, x0, self.quantize_sigma(_batch_sigma(sigma, x)))


class DiscreteDenoiser(Denoiser):
    """A denoiser for models trained on a discrete timestep grid (DDPM / Stable Diffusion).

    sigma is snapped to the nearest of the ``num_idx`` training sigmas from
    ``discretization(num_idx, do_append_zero, flip)``; with ``flip=True`` (default) the
    table is ascending so index i is DDPM timestep i. If ``quantize_c_noise`` the network's
    noise input is that integer index (as a float tensor), which is what diffusers passes
    to a UNet for the same step; otherwise the scaling's c_noise is passed as is.
    """

    def __init__(
        self,
        scaling_config: Mapping[str, Any],
        num_idx: int,
        discretization_config: Mapping[str, Any],
        do_append_zero: bool = False,
        quantize_c_noise: bool = True,
        flip: bool = True,
    ):
        super().__init__(scaling_config)
        if not isinstance(num_idx, int) or num_idx < 1:
            raise ValueError(f"num_idx: expected a positive integer, got {num_idx!r}")
        self.discretization = build(discretization_config, "discretization_config")
        sigmas = self.discretization(num_idx, do_append_zero=do_append_zero, flip=flip)  # (num_idx,)
        # Not persistent: derived from the config, so checkpoints hold network weights only.
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.num_idx = num_idx
        self.do_quantize_c_noise = quantize_c_noise

    def _apply(self, fn, recurse=True):
        # `.to(device)` moves the sigma table; `.to(bfloat16)` / `.half()` (half-precision
        # weights) must not round it: bf16 merges neighbouring timesteps' sigmas.
        table = self.sigmas
        super()._apply(fn, recurse)
        self.sigmas = table.to(self.sigmas.device)
        return self

    def sigma_to_idx(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the nearest training sigma; sigma: any shape -> long tensor, same shape and device."""
        table = self.sigmas.to(device=sigma.device, dtype=torch.float32)  # (N,)
        dists = (sigma.to(torch.float32).reshape(1, -1) - table[:, None]).abs()  # (N, numel)
        return dists.argmin(dim=0).reshape(sigma.shape)

    def idx_to_sigma(self, idx: torch.Tensor) -> torch.Tensor:
        """Training sigma of an index; idx: any shape (long) -> sigmas of the same shape and device."""
        return self.sigmas.to(idx.device)[idx]

    def quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.idx_to_sigma(self.sigma_to_idx(sigma)).to(sigma.dtype)

    def quantize_c_noise(self, c_noise: torch.Tensor) -> torch.Tensor:
        if not self.do_quantize_c_noise:
            return c_noise
        return self.sigma_to_idx(c_noise).to(c_noise.dtype)
