"""Small helpers shared by the diffusion modules: building sub-configs and seeded noise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig

from ..config import instantiate_from_config

__all__ = ["build", "randn", "randn_like"]


def build(config_or_object: Any, path: str) -> Any:
    """Build a ``target``/``params`` block; an already built object is returned unchanged.

    ``path`` names the constructor argument in error messages (e.g. "scaling_config").
    """
    if isinstance(config_or_object, (Mapping, DictConfig)):
        return instantiate_from_config(config_or_object, _path=path)
    if config_or_object is None:
        raise ValueError(f"{path}: expected a config block with 'target' and 'params', got None")
    return config_or_object


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator`` and moved to ``device``.

    Draws on the generator's device (so a CPU generator gives the same numbers whatever
    ``device`` is), like diffusers' ``randn_tensor``.
    """
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`randn` with x's shape, dtype and device."""
    return randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
