"""SDXL micro-conditioning: image sizes and crop coordinates passed through raw.

SDXL (Podell et al. 2023, Sec. 2.2) conditions on ``original_size_as_tuple``,
``crop_coords_top_left`` and ``target_size_as_tuple``. diffusers' UNet takes them,
concatenated in that order, as ``added_cond_kwargs["time_ids"]`` of shape (B, 6) and
applies the Fourier embedding itself, so this embedder only converts to float.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import AbstractEmbModel

__all__ = ["SizeConditionEmbedder"]


class SizeConditionEmbedder(AbstractEmbModel):
    """Return a (B, 2) size/crop entry as float, routed to ``"time_ids"`` by default.

    List one embedder per key, in the order original, crop, target: the conditioner
    concatenates them along the last dim into diffusers' (B, 6) ``time_ids``. A (B,)
    entry (e.g. the refiner's aesthetic score) becomes (B, 1).
    """

    def __init__(self, output_key: str = "time_ids") -> None:
        super().__init__()
        self.output_key = output_key
        # Carries the module's device and dtype through .to(); holds no data.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def forward(self, values: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
        # values: (B, 2) -> (B, 2) float
        out = torch.as_tensor(values).to(device=self._anchor.device, dtype=self._anchor.dtype)
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2:
            raise ValueError(f"{self.input_key or 'input'}: expected sizes of shape (B, 2), got {tuple(out.shape)}")
        return out
