"""Masks on the output features of `nn.Linear` layers (the UNet recipe: SD1, SD2, SDXL)."""

from __future__ import annotations

from torch import nn

from unlearn.hooks.base import MaskHooker

__all__ = ["LinearHooker"]


class LinearHooker(MaskHooker):
    """One mask unit per output feature: y (..., out_features) -> y * m (a forward hook)."""

    group = "linear"
    unit_name = "output feature"

    def is_target(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def num_units(self, module: nn.Module) -> int:
        return int(module.out_features)

    def attach(self, name: str, module: nn.Module):
        return module.register_forward_hook(self.output_hook(name, dim=-1))
