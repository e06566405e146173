"""The one call shape every network in the engine has."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class DiffusionNetwork(nn.Module, ABC):
    """``forward(x, t, cond)``: the raw network output (eps, v or x0, per its training).

    ``x``: (B, C, H, W) already scaled by the denoiser's c_in; ``t``: (B,) the network's
    time input (a DDPM timestep for diffusers models); ``cond``: the conditioner's dict.
    """

    @abstractmethod
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @property
    @abstractmethod
    def in_channels(self) -> int:
        """Channels of the noisy input, excluding any concatenated conditioning."""
