"""Masks on the output channels of normalization layers (LayerNorm, GroupNorm, RMSNorm)."""

from __future__ import annotations

from torch import nn

from unlearn.hooks.base import MaskHooker

__all__ = ["NormHooker"]


def _norm_types() -> tuple[type, ...]:
    from diffusers.models.normalization import RMSNorm

    types: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, RMSNorm)
    return types + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


class NormHooker(MaskHooker):
    """One mask unit per normalized channel.

    GroupNorm normalizes x (B, C, ...) and is masked along dim 1; LayerNorm and RMSNorm
    normalize the last dimension (B, ..., C) and are masked along it. Adaptive norms
    that return tuples (AdaLayerNormZero) are not targets.
    """

    group = "norm"
    unit_name = "channel"

    def is_target(self, module: nn.Module) -> bool:
        return isinstance(module, _norm_types())

    def num_units(self, module: nn.Module) -> int:
        if isinstance(module, nn.GroupNorm):
            return int(module.num_channels)
        shape = getattr(module, "normalized_shape", None) or getattr(module, "dim", None)
        return int(shape[-1])

    def attach(self, name: str, module: nn.Module):
        dim = 1 if isinstance(module, nn.GroupNorm) else -1
        return module.register_forward_hook(self.output_hook(name, dim=dim))
