"""A realism classifier on a network's bottleneck features: DMD2's GAN head (Sec. 4.3).

`BottleneckFeatures` stops a forward at the network's bottleneck (a UNet's ``mid_block``, a
transformer's middle block) and returns its output as a feature map; `ClassifierHead` maps
those features to one logit per image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unlearn.networks.base import DiffusionNetwork

__all__ = ["BottleneckFeatures", "ClassifierHead", "bottleneck_channels"]


class _FeaturesReady(Exception):
    """Raised by the feature hook to end the forward at the bottleneck (the rest of the network is not needed)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


class BottleneckFeatures:
    """A forward hook on one module of ``network`` that returns its output as a feature map.

    ``module_name`` defaults to the network's ``bottleneck_module`` (`DiffusionNetwork`: the
    UNet's ``mid_block``, a transformer's middle block). ``features(fn, *args)`` runs
    ``fn(*args)`` (a forward of the network) and returns the module's output read by the
    network's ``bottleneck_map``: (B, C, h, w), a transformer's image tokens un-packed from
    their grid. The forward stops there, so the second half never runs (DMD2's
    ``classify_forward`` does the same by rewriting the UNet's forward). A pre-hook on the
    network records its input's height and width, which place the tokens on their grid.
    Outside ``features`` the hooks do nothing. ``remove()`` unregisters them.
    """

    def __init__(self, network: nn.Module, module_name: str | None = None):
        module_name = module_name or getattr(network, "bottleneck_module", None)
        if not module_name:
            raise ValueError(
                f"gan_feature_module: {type(network).__name__} names no bottleneck; set "
                "model.params.objective_config.params.gan_feature_module"
            )
        try:
            module = network.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"gan_feature_module: {type(network).__name__} has no submodule {module_name!r}") from None
        self.module_name = module_name
        # any other module reads as a DiffusionNetwork does by default: a tensor, or a tuple's first item
        self._as_map = getattr(network, "bottleneck_map", None) or functools.partial(
            DiffusionNetwork.bottleneck_map, network
        )
        self._armed = False
        self._input_size: tuple[int, int] | None = None
        self._handles = [
            network.register_forward_pre_hook(self._record_input, with_kwargs=True),
            module.register_forward_hook(self._hook),
        ]

    def _record_input(self, network: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._armed:
            x = args[0] if args else kwargs["x"]  # forward(x, t, cond); x: (B, C, H, W)
            self._input_size = (int(x.shape[-2]), int(x.shape[-1]))

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._armed:
            return
        if self._input_size is None:
            raise ValueError(f"gan_feature_module: {self.module_name!r} ran outside a forward of the critic")
        raise _FeaturesReady(self._as_map(output, *self._input_size))

    def features(self, fn: Callable[..., Any], *args: Any) -> torch.Tensor:
        self._armed = True
        try:
            fn(*args)
        except _FeaturesReady as ready:
            return ready.features
        finally:
            self._armed, self._input_size = False, None
        raise ValueError(f"gan_feature_module: {self.module_name!r} did not run during the critic's forward")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class ClassifierHead(nn.Sequential):
    """Bottleneck features (B, C, h, w) -> realism logit (B,): a strided 4x4 conv, GroupNorm,
    SiLU, global average pool and a 1x1 conv (DMD2's ``cls_pred_branch``, resolution-free)."""

    def __init__(self, channels: int):
        groups = math.gcd(32, channels)
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=4, stride=2, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.float()).flatten()  # (B,)


def bottleneck_channels(network: nn.Module) -> int:
    """Channels of ``network``'s bottleneck features (a UNet's widest block, a transformer's width)."""
    channels = getattr(network, "bottleneck_channels", None)
    if not channels:
        raise ValueError(
            "gan_feature_channels: cannot infer the bottleneck width of "
            f"{type(network).__name__}; set model.params.objective_config.params.gan_feature_channels"
        )
    return int(channels)
