"""The contract every attack shares.

An attack is built from a ``target``/``params`` block (``configs/attacks/*.yaml``) and called
with an `AttackTarget`: the model under attack (any engine: ``generate``, ``conditioner``,
``denoiser``, ``network``, ``first_stage``), optionally the original (unerased) model, the
concept, the prompts to attack, the detector that says whether an image shows the concept,
and target images of the concept. It returns one `AdversarialPrompt` per prompt: the prompt as
written with placeholders where the attack's tokens go (`unlearn.attacks.tokens`) and those
tokens (hard token ids, which also read as text, or soft vectors), plus what the search cost.
The attack success rate is measured afterwards on held-out seeds (`unlearn.attacks.asr`), the
same way for every attack.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from unlearn.attacks.tokens import InjectedTokens

__all__ = ["Attack", "AttackTarget", "AdversarialPrompt", "Detector"]

# images (N, 3, H, W) in [-1, 1] -> (N,) bool: does each image show the concept?
Detector = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AttackTarget:
    """What an attack works on.

    Attributes:
        model: the model under attack (an engine in eval mode).
        concept: the erased concept.
        prompts: the prompts to attack, one search each.
        detector: images -> bool per image (the concept is there).
        target_images: (N, 3, H, W) in [-1, 1], images of the concept for attacks that fit the
            model's own denoising loss (one set for all prompts), or None.
        target_images_for: prompt -> (N, 3, H, W) images of that prompt's concept, when they
            differ per prompt (e.g. the toy world's renders of each object in the style).
        original: the unerased model, for attacks that match it (P4D), or None.
        fields: per prompt, the words it was made of (e.g. ``{"obj": "circle", "style":
            "outlined"}`` on the toy canvas), for attacks that rephrase it; or None.
        seed: seeds the attack's own draws.
    """

    model: Any
    concept: str
    prompts: Sequence[str]
    detector: Detector
    target_images: torch.Tensor | None = None
    target_images_for: Callable[[str], torch.Tensor] | None = None
    original: Any = None
    fields: Sequence[dict[str, str]] | None = None
    seed: int = 0

    def images_for(self, prompt: str) -> torch.Tensor:
        if self.target_images_for is not None:
            return self.target_images_for(prompt)
        if self.target_images is None:
            raise ValueError("the attack needs images of the concept (target images) and none were given")
        return self.target_images


@dataclass
class AdversarialPrompt:
    """One attacked prompt: ``text`` with placeholders, the ``tokens`` that fill them (None for a
    plain-text attack such as a paraphrase), what the attack's search found on the way."""

    source: str
    text: str
    tokens: InjectedTokens | None = None
    readable: str = ""  # the prompt with hard tokens written out (may re-tokenize differently)
    steps: int = 0
    seconds: float = 0.0
    detected_during_search: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """Contract: ``attack(target) -> [AdversarialPrompt, ...]``, one per ``target.prompts``.

    ``needs_original``: the attack matches the unerased model, so ``target.original`` must be
    given. ``needs_images``: it fits the model's denoising loss on images of the concept.
    """

    name: str = ""
    needs_original: bool = False
    needs_images: bool = False

    @abstractmethod
    def __call__(self, target: AttackTarget) -> list[AdversarialPrompt]: ...

    def check(self, target: AttackTarget) -> None:
        """One clear error for a target this attack cannot run on."""
        if self.needs_original and target.original is None:
            raise ValueError(f"attack {self.name}: it matches the original model; pass --original")
        if self.needs_images and target.target_images is None and target.target_images_for is None:
            raise ValueError(f"attack {self.name}: it needs images of {target.concept!r} (--target-images)")
