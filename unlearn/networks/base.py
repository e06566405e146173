"""The one call shape every network in the engine has."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

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

    # The bottleneck: where DMD2's GAN head reads the critic's features
    # (`unlearn.networks.classifier_head.BottleneckFeatures`). Each adapter names the module and
    # says how to read its output as a feature map, so one forward hook serves every architecture.
    bottleneck_module: str | None = None

    @property
    def bottleneck_channels(self) -> int | None:
        """Channels C of `bottleneck_map`'s features; None: not known for this network."""
        return None

    def bottleneck_map(self, output: Any, height: int, width: int) -> torch.Tensor:
        """A module's forward output -> features (B, C, h, w), for an input x of height x width:
        a tensor as it is, a tuple's first item (a UNet block's hidden states)."""
        return output[0] if isinstance(output, (tuple, list)) else output


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
