"""The contract of closed-form weight editors: one call that returns the edited tensors.

A closed-form method (UCE; RECE and MACE's closed-form step have the same shape) changes some
projection weights W (out, D) of the network so that text embeddings of the erased prompts are
mapped where their targets' are, while those of preserved prompts keep their outputs. It needs
no sampler and no training loop: `unlearn.engine.closed_form.ClosedFormEngine` selects the
tensors (a `ParameterSelector`, e.g. every cross-attention ``to_k``/``to_v``), encodes prompts
with the model's own text encoder and calls the editor once.

An editor is built from the engine's ``editor_config`` target block and called as
``editor(weights, encode, prompts) -> EditOutput``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["TextRows", "TextEncoder", "EditPrompts", "EditOutput", "WeightEditor"]


@dataclass
class TextRows:
    """Text-encoder outputs of B prompts as the cross-attention layers see them.

    Attributes:
        rows: (B, L, D) the cross-attention context (the conditioner's ``crossattn``: SDXL's
            two encoders concatenated along D).
        last: (B,) long, the index of each prompt's last word token (its end token's index - 1;
            0, the start token, for the empty prompt).
    """

    rows: torch.Tensor
    last: torch.Tensor


# prompts -> their TextRows (the engine's frozen text encoder, no grad)
TextEncoder = Callable[[Sequence[str]], TextRows]


@dataclass
class EditPrompts:
    """What to edit: ``erase[i]`` should produce what ``target[i]`` produces (parallel lists);
    ``preserve`` should produce what it produced before."""

    erase: list[str]
    target: list[str]
    preserve: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.erase) != len(self.target):
            raise ValueError(f"EditPrompts: {len(self.erase)} erase prompts but {len(self.target)} targets")
        if not self.erase:
            raise ValueError("EditPrompts: nothing to erase")


@dataclass
class EditOutput:
    """``weights``: {name: the edited tensor} (the names given, same shapes); ``logs``: detached
    scalars describing the edit (e.g. how far the erased rows are from their targets)."""

    weights: dict[str, torch.Tensor]
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class WeightEditor(ABC):
    """Contract: ``editor(weights, encode, prompts) -> EditOutput``.

    ``weights`` are the original tensors {diffusers UNet name: (out, D)}; ``encode`` gives the
    `TextRows` of prompts. The editor must not change ``weights`` in place.
    """

    name: str = ""

    @abstractmethod
    def __call__(
        self, weights: Mapping[str, torch.Tensor], encode: TextEncoder, prompts: EditPrompts
    ) -> EditOutput: ...

    def metadata(self) -> dict[str, Any]:
        """Settings recorded in the exported weights' metadata."""
        return {}
