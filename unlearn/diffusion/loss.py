"""The denoising score-matching loss in x0 space (Karras et al. 2022, Eq. 8).

    L = E_{sigma, eps} [ lambda(sigma) || D(x0 + sigma eps, sigma) - x0 ||^2 ]

With `EpsScaling` + `EpsWeighting` this is the eps MSE of Ho et al. 2020 (Eq. 14); with
`VScaling` + `VWeighting` the v MSE of Salimans & Ho 2022; with `EDMScaling` +
`EDMWeighting` + `EDMSampling` the EDM loss. Optional offset noise (Guttenberg 2023,
"Diffusion with Offset Noise") adds a per-(sample, channel) constant to eps.

`FlowMatchingLoss` is rectified flow's conditional flow matching loss (Lipman et al. 2023;
Liu et al. 2023; SD3: Esser et al. 2024, Eq. 9 with Sec. 3.1's timestep densities):

    L = E_{sigma, x0, eps} [ lambda(sigma) || v_theta(x_sigma, sigma) - (eps - x0) ||^2 ],
    x_sigma = (1 - sigma) x0 + sigma eps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .denoiser import Denoiser, Network
from .parameterization import append_dims
from .scalings import FlowScaling
from .utils import build, randn, randn_like

__all__ = ["StandardDiffusionLoss", "FlowMatchingLoss", "flow_interpolate", "velocity_target"]

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


def flow_interpolate(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps; x0, eps: (B, ...), sigma: (B,) -> (B, ...)."""
    s = append_dims(sigma, x0.ndim)  # (B, 1, 1, 1)
    return (1 - s) * x0 + s * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = d x_sigma / d sigma = eps - x0, the regression target of a rectified-flow network."""
    return eps - x0


class FlowMatchingLoss:
    """Per-sample weighted velocity regression; ``loss(network, denoiser, x0, cond) -> (B,)``.

    The call shape of `StandardDiffusionLoss`, for networks trained to predict the velocity
    (a denoiser with `FlowScaling`: SD3, Flux). The loss is taken on the network's own output
    (`Denoiser.network_output`), not through x0 = x - sigma v, so it stays exact near sigma = 0.
    ``sigma_sampler_config``: `LogitNormalSampling` (SD3) or `UniformSampling`;
    ``loss_weighting_config``: `UnitWeighting` (default, SD3), `CosMapWeighting`, ...
    """

    def __init__(
        self,
        sigma_sampler_config: Mapping[str, Any],
        loss_weighting_config: Mapping[str, Any] | None = None,
        loss_type: str = "l2",
    ):
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"loss_type: expected one of {_LOSS_TYPES}, got {loss_type!r}")
        self.sigma_sampler = build(sigma_sampler_config, "sigma_sampler_config")
        self.loss_weighting = build(
            loss_weighting_config or {"target": "unlearn.diffusion.loss_weighting.UnitWeighting"},
            "loss_weighting_config",
        )
        self.loss_type = loss_type

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

        ``sigma`` (B,) in [0, 1] and ``noise`` (B, C, H, W) override the random draws (sigma
        first, then noise, both from ``generator``).
        """
        if not isinstance(getattr(denoiser, "scaling", None), FlowScaling):
            raise ValueError(
                "loss_fn_config: FlowMatchingLoss trains velocity networks; the model's "
                "denoiser_config.params.scaling_config must be unlearn.diffusion.scalings.FlowScaling, "
                f"got {type(getattr(denoiser, 'scaling', None)).__name__}"
            )
        batch = x0.shape[0]
        if sigma is None:
            sigma = self.sigma_sampler(batch, generator=generator, device=x0.device)
        sigma = sigma.to(device=x0.device, dtype=x0.dtype)  # (B,)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma: expected shape ({batch},), got {tuple(sigma.shape)}")
        if noise is None:
            noise = randn_like(x0, generator)
        x = flow_interpolate(x0, noise, sigma)  # (B, C, H, W)
        v_pred = denoiser.network_output(network, x, sigma, cond)
        err = v_pred - velocity_target(x0, noise)
        weight = append_dims(self.loss_weighting(sigma), x0.ndim)  # (B, 1, 1, 1)
        per_elem = weight * (err**2 if self.loss_type == "l2" else err.abs())
        return per_elem.reshape(batch, -1).mean(dim=1)
