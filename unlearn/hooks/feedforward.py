"""Masks on the hidden channels of diffusers `FeedForward` blocks (transformer blocks of
UNets, SD3, Flux): the activation's output, i.e. the input channels of the down projection.
"""

from __future__ import annotations

from torch import nn

from unlearn.hooks.base import MaskHooker

__all__ = ["FeedForwardHooker"]


def _down_projection(ff: nn.Module) -> nn.Linear | None:
    # diffusers FeedForward.net = [activation (GELU/GEGLU/... with its up projection), Dropout, Linear, ...]
    return next((m for m in list(ff.net)[1:] if isinstance(m, nn.Linear)), None)


class FeedForwardHooker(MaskHooker):
    """One mask unit per hidden channel: act(x W_up) (..., inner) -> act(x W_up) * m.

    The hook sits on ``ff.net[0]`` (the activation module, whose output is the hidden
    state after gating for GEGLU), so masked channels never reach the down projection.
    """

    group = "ff"
    unit_name = "hidden channel"

    def is_target(self, module: nn.Module) -> bool:
        from diffusers.models.attention import FeedForward

        return isinstance(module, FeedForward) and _down_projection(module) is not None

    def num_units(self, module: nn.Module) -> int:
        return int(_down_projection(module).in_features)

    def attach(self, name: str, module: nn.Module):
        return module.net[0].register_forward_hook(self.output_hook(name, dim=-1))
