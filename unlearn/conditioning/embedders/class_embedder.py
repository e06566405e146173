"""Class-label conditioning: a learned table of one vector per class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import AbstractEmbModel

__all__ = ["ClassEmbedder"]


class ClassEmbedder(AbstractEmbModel):
    """Embed integer labels with `nn.Embedding`.

    Output: (B, D), routed to ``"vector"``; with ``add_sequence_dim`` (B, 1, D), routed
    to ``"crossattn"`` (one context token per sample).
    """

    def __init__(self, n_classes: int, embed_dim: int, add_sequence_dim: bool = False) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        self.n_classes = n_classes
        self.add_sequence_dim = add_sequence_dim
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
        # labels: (B,) integers in [0, n_classes)
        device = self.embedding.weight.device
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.n_classes):
            bad = labels[(labels < 0) | (labels >= self.n_classes)][0].item()
            raise ValueError(f"class label {bad} is outside [0, n_classes={self.n_classes})")
        emb = self.embedding(labels)  # (B, D)
        return emb[:, None, :] if self.add_sequence_dim else emb
