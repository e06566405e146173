"""The contract every embedder of a `GeneralConditioner` follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["AbstractEmbModel", "EmbedderOutput"]

# One tensor, or several (e.g. crossattn tokens and a pooled vector) in a fixed order.
EmbedderOutput = torch.Tensor | Sequence[torch.Tensor]


class AbstractEmbModel(nn.Module, ABC):
    """Base of all embedders: a module that maps batch entries to conditioning tensors.

    The conditioner-level attributes below are set by `GeneralConditioner` from the
    keys beside ``target``/``params`` in each ``emb_models`` entry (sgm convention);
    subclasses only set defaults (e.g. `SizeConditionEmbedder` defaults ``output_key``
    to ``"time_ids"``).

    Attributes:
        is_trainable: whether the conditioner lets gradients flow into this embedder.
        ucg_rate: per-sample probability of classifier-free-guidance dropout in training.
        input_key: the batch key passed to `forward` (or ``input_keys`` for several).
        legacy_ucg_value: value that replaces a dropped input (``""`` for text); when
            None, dropout zeroes the embedding instead.
        output_key: None to route by ndim, a key, or one key per output.
        join: how the outputs join those of earlier embedders under the same key:
            ``"channels"`` (concatenated on channels, the default) or ``"tokens"``
            (appended along the token axis, both zero-padded on channels to the wider).
    """

    def __init__(self) -> None:
        super().__init__()
        self.is_trainable: bool = False
        self.ucg_rate: float = 0.0
        self.input_key: str | None = None
        self.input_keys: list[str] | None = None
        self.legacy_ucg_value: Any = None
        self.output_key: str | list[str] | None = None
        self.join: str = "channels"

    @property
    def batch_keys(self) -> list[str]:
        """The batch keys this embedder reads, in `forward` argument order."""
        if self.input_keys is not None:
            return list(self.input_keys)
        return [self.input_key] if self.input_key is not None else []

    @abstractmethod
    def forward(self, *inputs: Any) -> EmbedderOutput:
        """Embed the batch entries named by `batch_keys`."""
