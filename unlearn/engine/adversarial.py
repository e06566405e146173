"""Adversarial prompts found during erasure: an erasure that is trained against its own attacks.

In the spirit of AdvUnlearn (Zhang et al., NeurIPS 2024): every ``every_n_steps`` training
steps, ``attack`` (any `unlearn.attacks.Attack` block, with cheap settings) searches, on the
model as it is being trained, for prompts that bring the concept back; until the next search the
erasure loss is also applied to them: in a ``share`` of the training samples the trained model
sees an adversarial prompt where it would see the concept's (the target stays the frozen
model's erasure target for the concept), so the erasure has to hold for the tokens that undo it.
The retain term is the method's own (ESD's ``preserve`` prompts). When the method trains the text
encoder (AdvUnlearn's choice, `unlearn.selection.TextEncoder`), the found prompts (text and tokens)
are encoded anew by the trained encoder, with grad, at every step (`encode`), so the erasure is
learnt by the encoder that reads them.

The attack fits the model's denoising loss on images of the concept: the original model's own
samples of each attacked prompt (``images_per_prompt`` of them, drawn once), so no real images
are needed. The attack's detector is not used (searches run their full budget).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.tokens import injected

log = logging.getLogger(__name__)

__all__ = ["AdversarialPrompts"]

# Seeds of the original model's samples of the attacked prompts, apart from every evaluation's.
IMAGE_SEED = 30_000


class AdversarialPrompts:
    """Args:
    attack: the attack that searches (e.g. `UnlearnDiffAtk` with a few dozen steps).
    every_n_steps: training steps between searches (the first runs before step 0).
    share: probability that a training sample uses an adversarial prompt (once one exists).
    prompts_per_search: concept prompts attacked per search (drawn at random); each search
        replaces the adversarial prompts of the last one.
    images_per_prompt: the original model's samples of each attacked prompt (the attack's images).
    """

    def __init__(
        self,
        attack: Attack,
        every_n_steps: int = 100,
        share: float = 0.5,
        prompts_per_search: int = 2,
        images_per_prompt: int = 8,
    ):
        if not isinstance(attack, Attack):
            raise ValueError(f"attack: expected an attack block (unlearn.attacks), got {attack!r}")
        for key, value in (("every_n_steps", every_n_steps), ("prompts_per_search", prompts_per_search),
                           ("images_per_prompt", images_per_prompt)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"share: expected a probability in (0, 1], got {share!r}")
        if attack.needs_original:
            raise ValueError(
                f"attack: {attack.name} needs the original model as a separate network; use an attack "
                "on the trained model alone (unlearndiffatk, concept_inversion, ring_a_bell)"
            )
        self.attack, self.every_n_steps, self.share = attack, every_n_steps, float(share)
        self.prompts_per_search, self.images_per_prompt = prompts_per_search, images_per_prompt
        self.found: list[AdversarialPrompt] = []
        self.conds: dict[str, torch.Tensor] | None = None  # one row per found prompt
        self.searches, self.search_seconds = 0, 0.0
        self._images: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"searches": self.searches, "search_seconds": self.search_seconds}

    def maybe_search(self, engine, prompts: list[str], concept: str, step: int, generator: torch.Generator) -> None:
        """Search anew at step 0, every_n_steps, ... and at a resumed run's first step (on the model
        as it is now)."""
        if step % self.every_n_steps and self.conds is not None:
            return
        pick = torch.randperm(len(prompts), generator=generator)[: self.prompts_per_search].tolist()
        chosen = [prompts[i] for i in pick]
        start = time.perf_counter()
        target = AttackTarget(model=engine, concept=concept, prompts=chosen,
                              detector=lambda images: torch.zeros(images.shape[0], dtype=torch.bool),
                              target_images_for=lambda p: self._original_images(engine, p),
                              seed=int(torch.randint(0, 2**31, (1,), generator=generator)))  # fmt: skip
        was_training = engine.training
        engine.eval()
        try:
            self.found = self.attack(target)
            with torch.no_grad():
                self.conds = self.encode(engine)
        finally:
            engine.train(was_training)
        self.searches += 1
        self.search_seconds += time.perf_counter() - start
        log.info("adversarial search %d at step %d (%.1f s): %s", self.searches, step,
                 time.perf_counter() - start, [a.readable for a in self.found])  # fmt: skip

    @torch.no_grad()
    def _original_images(self, engine, prompt: str) -> torch.Tensor:
        if prompt not in self._images:
            seeds = list(range(IMAGE_SEED, IMAGE_SEED + self.images_per_prompt))
            with engine.as_original():
                self._images[prompt] = engine.generate([prompt] * len(seeds), seeds=seeds)
        return self._images[prompt]

    def encode(self, engine) -> dict[str, torch.Tensor] | None:
        """The found prompts' conditions (one row each) by the engine's conditioner as it is now, with
        grad where it trains; None before the first search."""
        if not self.found:
            return None
        conds = []
        for found in self.found:
            with injected(engine.conditioner, found.tokens):
                conds.append(engine.conditioning_for([found.text]))
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}

    def replace(
        self, concept: dict[str, Any], generator: torch.Generator, conds: dict[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """``concept`` (the trained model's condition per sample) with a ``share`` of its rows
        replaced by adversarial prompts' conditions (``conds``, one row per found prompt; None: those
        computed at the search); also the (n,) bool rows replaced."""
        n = next(v.shape[0] for v in concept.values() if torch.is_tensor(v))
        if self.conds is None:
            return concept, torch.zeros(n, dtype=torch.bool)
        conds = self.conds if conds is None else conds
        use = torch.rand(n, generator=generator) < self.share  # (n,)
        which = torch.randint(len(self.found), (n,), generator=generator)
        out = {}
        for key, value in concept.items():
            if not torch.is_tensor(value):
                out[key] = value
                continue
            adversarial = conds[key][which.to(value.device)]  # (n, ...)
            out[key] = torch.where(use.to(value.device).view(-1, *[1] * (value.ndim - 1)), adversarial, value)
        return out, use
