"""The denoising score-matching loss in x0 space (Karras et al. 2022, Eq. 8).

    L = E_{sigma, eps} [ lambda(sigma) || D(x0 + sigma eps, sigma) - x0 ||^2 ]

With `EpsScaling` + `EpsWeighting` this is the eps MSE of Ho et al. 2020 (Eq. 14); with
`VScaling` + `VWeighting` the v MSE of Salimans & Ho 2022; with `EDMScaling` +
`EDMWeighting` + `EDMSampling` the EDM loss. Optional offset noise (Guttenberg 2023,
"Diffusion with Offset Noise") adds a per-(sample, channel) constant to eps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .denoiser import Denoiser, Network
from .parameterization import append_dims
from .utils import build, randn, randn_like

__all__ = ["StandardDiffusionLoss"]

_LOSS_TYPES = ("l2", "l1")


class StandardDiffusionLoss:
    """Per-sample weighted x0 regression loss; ``loss(network, denoiser, x0, cond) -> (B,)``."""

    def __init__(
        self,
        sigma_sampler_config: Mapping[str, Any],
        loss_weighting_config: Mapping[str, Any],
        loss_type: str = "l2",
        offset_noise_level: float = 0.0,
    ):
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"loss_type: expected one of {_LOSS_TYPES}, got {loss_type!r}")
        if offset_noise_level < 0:
            raise ValueError(f"offset_noise_level: expected >= 0, got {offset_noise_level}")
        self.sigma_sampler = build(sigma_sampler_config, "sigma_sampler_config")
        self.loss_weighting = build(loss_weighting_config, "loss_weighting_config")
        self.loss_type = loss_type
        self.offset_noise_level = offset_noise_level

    def __call__(
        self,
        network: Network,
        denoiser: Denoiser,
        x0: torch.Tensor,
        cond: Mapping[str, Any],
        generator: torch.Generator | None = None,
        *,
        sigma: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x0: (B, C, H, W) clean samples -> per-sample loss (B,).

        ``sigma`` (B,) and ``noise`` (B, C, H, W) override the random draws (sigma is drawn
        first, then noise, then the offset, all from ``generator``).
        """
        batch = x0.shape[0]
        if sigma is None:
            sigma = self.sigma_sampler(batch, generator=generator, device=x0.device)
        sigma = sigma.to(device=x0.device, dtype=x0.dtype)  # (B,)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma: expected shape ({batch},), got {tuple(sigma.shape)}")
        if noise is None:
            noise = randn_like(x0, generator)
        if self.offset_noise_level > 0:
            offset = randn(tuple(x0.shape[:2]), generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C)
            noise = noise + self.offset_noise_level * append_dims(offset, x0.ndim)
        x = x0 + noise * append_dims(sigma, x0.ndim)  # (B, C, H, W)
        x0_pred = denoiser(network, x, sigma, cond)
        weight = append_dims(self.loss_weighting(sigma), x0.ndim)  # (B, 1, 1, 1)
        err = x0_pred - x0
        per_elem = weight * (err**2 if self.loss_type == "l2" else err.abs())
        return per_elem.reshape(batch, -1).mean(dim=1)
