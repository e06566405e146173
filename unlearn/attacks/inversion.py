"""Concept inversion (Pham et al., "Circumventing Concept Erasure Methods For Text-to-Image
Generative Models", ICLR 2024).

Textual inversion (Gal et al., ICLR 2023) against the erased model: ``num_tokens`` new token
embeddings v (one (K, D_i) set per text encoder, T5 included, where each learned token stands for
the span of tokens its tokenizer spells the placeholder with) are learned so that the erased
model denoises images of the concept best under a prompt holding them,
E_{t, eps} ‖eps − eps_θ*(x_t, t | c(v))‖² (`DenoisingLoss`); the model and its text encoders stay
frozen. v starts from ``init_word``'s
embedding in each encoder's own table (default: the concept word; a word of several tokens starts
every learned token at the mean of its rows), Adam.

In each prompt the placeholder(s) take the place of the concept word's first occurrence ("an
outlined circle" -> "an sks circle"); a prompt that does not name the concept gets them as a
prefix. **One inversion serves every prompt**, as in the paper (one learned word per concept): the
steps go round the target's prompts, step j fitting prompt j mod P's images under that prompt's
text, so the object words of each prompt keep their meaning and the token learns the concept
alone. Each prompt's result reports the steps that used it (they sum to ``steps``) and holds its
own copy of the vectors (saved once per prompt).

The paper: 5,000 steps, lr 5e-3 on ~25 images of the concept; the defaults here are sized for the
toy model. The result is soft vectors (`InjectedTokens` vectors {encoder: (K, D_i)}), not text.
"""

from __future__ import annotations

import logging
import re
import time

import torch
from tqdm.auto import tqdm

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.denoising import DenoisingLoss
from unlearn.attacks.tokens import PLACEHOLDER, InjectedTokens, TextEncoderAccess, injected, text_encoders

log = logging.getLogger(__name__)

__all__ = ["ConceptInversion", "placeholder_text"]

LEARNED = "<S*>"  # how the learned token is written in the readable prompt


def placeholder_text(prompt: str, concept: str, count: int) -> str:
    """``prompt`` with its first whole-word ``concept`` (any case) replaced by ``count``
    placeholders, or with them before it when it does not name the concept."""
    words = " ".join([PLACEHOLDER] * count)
    out, n = re.subn(rf"\b{re.escape(concept)}\b", words, prompt, count=1, flags=re.IGNORECASE)
    return out if n else f"{words} {prompt}"


def _initial(access: TextEncoderAccess, word: str, count: int) -> torch.Tensor:
    """(K, D): every learned token at the mean embedding of ``word``'s tokens."""
    ids = access.token_ids(word)
    if not ids:
        raise ValueError(f"init_word: {word!r} is no token of the text encoder")
    row = access.weight.detach()[ids].float().mean(dim=0)  # (D,)
    return row.expand(count, -1).clone()


class ConceptInversion(Attack):
    """Args:
    num_tokens: learned tokens K (the paper: 1).
    init_word: the word whose embedding they start from; None: the concept.
    steps: Adam steps in all, shared by the prompts (the paper: 5,000).
    lr: Adam learning rate (the paper: 5e-3).
    steps_per_timestep: steps of a prompt between its new draws of images, noise levels and noise.
    images_per_step: images in each step's loss.
    """

    name = "concept_inversion"
    needs_images = True

    def __init__(
        self,
        num_tokens: int = 1,
        init_word: str | None = None,
        steps: int = 300,
        lr: float = 5e-3,
        steps_per_timestep: int = 1,
        images_per_step: int = 4,
    ):
        for key, value in (
            ("num_tokens", num_tokens),
            ("steps", steps),
            ("steps_per_timestep", steps_per_timestep),
            ("images_per_step", images_per_step),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {lr!r}")
        if init_word is not None and (not isinstance(init_word, str) or not init_word.strip()):
            raise ValueError(f"init_word: expected a word, got {init_word!r}")
        self.num_tokens, self.init_word, self.steps, self.lr = num_tokens, init_word, steps, float(lr)
        self.steps_per_timestep, self.images_per_step = steps_per_timestep, images_per_step

    def texts(self, target: AttackTarget) -> list[str]:
        """Every prompt with the placeholders in place of the concept word."""
        return [placeholder_text(p, target.concept, self.num_tokens) for p in target.prompts]

    def __call__(self, target: AttackTarget) -> list[AdversarialPrompt]:
        self.check(target)
        model = target.model
        encoders = text_encoders(model.conditioner)
        texts = self.texts(target)
        for text in texts:
            if any(e.placeholders_in(text) != self.num_tokens for e in encoders):
                raise ValueError(f"num_tokens: {self.num_tokens} tokens in {text!r} do not fit the max length")
        word = self.init_word or target.concept
        vectors = {i: _initial(e, word, self.num_tokens).requires_grad_(True) for i, e in enumerate(encoders)}
        optimizer = torch.optim.Adam(list(vectors.values()), lr=self.lr)
        g = torch.Generator().manual_seed(target.seed * 1_000_003)
        losses = [
            DenoisingLoss(model, target.images_for(p), self.images_per_step, self.steps_per_timestep, g)
            for p in target.prompts
        ]
        start, loss = time.perf_counter(), torch.tensor(float("nan"))
        for step in tqdm(range(self.steps), desc=self.name, unit="step"):
            j = step % len(texts)
            with injected(model.conditioner, InjectedTokens(vectors=vectors)):
                loss = losses[j](model.conditioning_for([texts[j]]))
            grads = torch.autograd.grad(loss, list(vectors.values()))
            for v, grad in zip(vectors.values(), grads):
                v.grad = grad
            optimizer.step()
        seconds = time.perf_counter() - start
        log.info("%s: %d steps, last loss %.4g, %.1f s", self.name, self.steps, float(loss.detach()), seconds)
        results = []
        for j, (prompt, text) in enumerate(zip(target.prompts, texts)):
            used = len(range(j, self.steps, len(texts)))  # the steps that fitted this prompt
            results.append(
                AdversarialPrompt(
                    source=prompt,
                    text=text,
                    tokens=InjectedTokens(vectors={i: v.detach().clone() for i, v in vectors.items()}),
                    readable=" ".join(LEARNED if w == PLACEHOLDER else w for w in text.split()),
                    steps=used,
                    seconds=seconds * used / self.steps,
                    extra={"final_loss": float(loss.detach()), "init_word": word, "shared_steps": self.steps},
                )
            )
        return results
