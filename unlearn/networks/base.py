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


DIFFUSERS_MODEL_ATTRS = ("unet", "transformer")


def diffusers_root(network: nn.Module) -> tuple[nn.Module, str]:
    """(the diffusers model an adapter wraps, its prefix in the adapter): ``network.unet`` under
    ``"unet."`` (`DiffusersUNet`), ``network.transformer`` under ``"transformer."`` (the SD3 and
    Flux adapters); any other module is its own root, under ``""``. Its names are diffusers
    state-dict names, what a pipeline's ``unet`` / ``transformer`` loads."""
    for attr in DIFFUSERS_MODEL_ATTRS:
        inner = getattr(network, attr, None)
        if isinstance(inner, nn.Module):
            return inner, f"{attr}."
    return network, ""
