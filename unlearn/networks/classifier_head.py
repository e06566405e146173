"""A realism classifier on a network's bottleneck features: DMD2's GAN head (Sec. 4.3).

`BottleneckFeatures` stops a forward at one module (the UNet's ``mid_block``) and returns its
output; `ClassifierHead` maps those features to one logit per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["BottleneckFeatures", "ClassifierHead", "widest_block"]


class _FeaturesReady(Exception):
    """Raised by the feature hook to end the forward at the bottleneck (the decoder is not needed)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


class BottleneckFeatures:
    """A forward hook on one module (the UNet's ``mid_block``) that returns its output.

    ``features(fn, *args)`` runs ``fn(*args)`` (a forward of the network) and returns the
    module's output (B, C, h, w); the forward stops there, so the decoder half never runs
    (DMD2's ``classify_forward`` does the same by rewriting the UNet's forward). Outside
    ``features`` the hook does nothing. ``remove()`` unregisters it.
    """

    def __init__(self, network: nn.Module, module_name: str):
        try:
            module = network.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"gan_feature_module: {type(network).__name__} has no submodule {module_name!r}") from None
        self.module_name = module_name
        self._armed = False
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed:
            raise _FeaturesReady(output[0] if isinstance(output, (tuple, list)) else output)

    def features(self, fn: Callable[..., Any], *args: Any) -> torch.Tensor:
        self._armed = True
        try:
            fn(*args)
        except _FeaturesReady as ready:
            return ready.features
        finally:
            self._armed = False
        raise ValueError(f"gan_feature_module: {self.module_name!r} did not run during the critic's forward")

    def remove(self) -> None:
        self._handle.remove()


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


def widest_block(network: nn.Module) -> int:
    config = getattr(getattr(network, "unet", network), "config", None)
    widths = getattr(config, "block_out_channels", None) if config is not None else None
    if not widths:
        raise ValueError(
            "gan_feature_channels: cannot infer the bottleneck width of "
            f"{type(network).__name__}; set model.params.objective_config.params.gan_feature_channels"
        )
    return int(widths[-1])
