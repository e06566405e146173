"""P4D (Chin et al., "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models by Finding
Problematic Prompts", ICML 2024).

The erased model θ* is steered back to what the original model θ does with the source prompt P:
a prompt P′ holding learned hard tokens is searched to minimise

    E_{t, x_t} ‖eps_θ*(x_t, t | P′) − eps_θ(x_t, t | P)‖²

on x_t noised from x0 as `DenoisingLoss` does (x0 + sigma_t eps, or the rectified flow's), x0 the
concept's images (the target's images of the prompt, else the original model's own samples of
it). The tokens are found as in PEZ (Wen et al., NeurIPS 2023):
continuous embeddings E (K × D) are kept; every step each row is projected to its nearest
vocabulary row by **cosine similarity** (start / end / padding tokens and the placeholder are
never picked), the forward pass uses those real tokens, and the gradient taken at the projected
rows is applied to E (AdamW). The found prompt is therefore text.

Variants (``mode``):

* ``n`` (P4D-N): ``num_tokens`` free tokens (the paper: 16). The paper's P4D-N prompt is the N
  tokens alone (``with_prompt: false``); by default they go before the prompt.
* ``k`` (P4D-K): one learned token after every ``every`` (the paper: 3) words of the prompt, whose
  own words stay ("a b c sks d e f sks g"); a prompt shorter than ``every`` words gets one token
  at its end. (The paper counts CLIP tokens; a word split into several tokens cannot take a token
  in its middle in text, so words are counted here.)

Several text encoders (SDXL, SD3, Flux): E lives in the first encoder's space and is projected
onto its table; the other encoders read the same ids (no gradient flows through them to E): those
that share its vocabulary (SDXL's and SD3's second CLIP) take the ids' rows, one of another
vocabulary (T5) reads the tokens as text (`unlearn.attacks.tokens`). The paper (and PEZ) run
3,000 steps at lr 0.1, weight decay 0.1; the defaults here are sized for the toy model. Every
``check_every`` steps the current prompt is sampled on ``check_seeds`` and the search stops once
the detector sees the concept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.denoising import DenoisingLoss
from unlearn.attacks.targets import original_images
from unlearn.attacks.tokens import PLACEHOLDER, InjectedTokens, injected, text_encoders, with_placeholders

log = logging.getLogger(__name__)

__all__ = ["P4D", "EpsMatchingLoss", "interleave", "nearest_rows"]

MODES = ("n", "k")
IMAGE_SEED = 20_000  # the original model's samples of a prompt, when the target has no images


def interleave(prompt: str, every: int) -> str:
    """``prompt`` with a placeholder after every ``every`` words (P4D-K); one at the end of a
    prompt shorter than that: ``interleave("a b c d", 2) == "a b sks c d sks"``."""
    words = prompt.split()
    out = []
    for i, word in enumerate(words, start=1):
        out.append(word)
        if i % every == 0:
            out.append(PLACEHOLDER)
    if len(words) < every:
        out.append(PLACEHOLDER)
    return " ".join(out)


def nearest_rows(embeddings: torch.Tensor, table: torch.Tensor, banned: Sequence[int] = ()) -> torch.Tensor:
    """The id of each row's nearest table row by cosine similarity (PEZ's projection).

    embeddings: (K, D); table: (V, D); banned: ids never returned. Returns (K,) long.
    """
    similarity = F.normalize(embeddings.float(), dim=-1) @ F.normalize(table.float(), dim=-1).T  # (K, V)
    if len(banned):
        similarity[:, list(banned)] = -float("inf")
    return similarity.argmax(dim=-1)


class EpsMatchingLoss(DenoisingLoss):
    """`DenoisingLoss` whose regression target is the original model's noise prediction under the
    source prompt instead of the drawn noise: ``loss(cond) = ‖eps_θ*(x_t, t | cond) −
    eps_θ(x_t, t | source)‖²``, the target recomputed at every new draw of (x0, t, eps).

    Args:
        model: the erased model θ*; its first stage encodes ``images``.
        original: the original model θ (same latent space).
        source_cond: the original model's conditioning of the source prompt (batch 1).
        images, batch_size, resample_every, generator: as in `DenoisingLoss`.
    """

    def __init__(
        self,
        model,
        original,
        source_cond: dict[str, torch.Tensor],
        images: torch.Tensor,
        batch_size: int,
        resample_every: int,
        generator: torch.Generator,
    ):
        self.original, self.source_cond = original, source_cond
        super().__init__(model, images, batch_size, resample_every, generator)

    @torch.no_grad()
    def _draw(self) -> None:
        super()._draw()
        n = self.x_t.shape[0]
        cond = {k: v.expand(n, *v.shape[1:]) if torch.is_tensor(v) else v for k, v in self.source_cond.items()}
        eps = self.original.denoiser.predict_eps(self.original.sampling_network, self.x_t, self.sigma, cond)
        self.target = eps.float()  # (n, C, h, w): what the original model predicts for the source prompt


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}: expected a positive integer, got {value!r}")
    return value


class P4D(Attack):
    """Args:
    mode: ``n`` (P4D-N, free tokens) or ``k`` (P4D-K, a token after every ``every`` words).
    num_tokens: P4D-N's tokens (the paper: 16; the toy model's text encoder holds 14 tokens).
    every: P4D-K's words between learned tokens (the paper: 3).
    with_prompt: P4D-N only: the tokens before the prompt (true) or alone (false, the paper).
    steps: optimisation steps per prompt (the paper: 3,000).
    lr: AdamW learning rate (the paper: 0.1).
    weight_decay: AdamW weight decay on the continuous embeddings (PEZ: 0.1).
    steps_per_timestep: steps between new draws of images, noise levels and noise (1: every step).
    images_per_step: images in each step's loss.
    num_images: the original model's samples per prompt, when the target has no images.
    check_every: steps between samples of the current prompt for the detector (0: never).
    check_seeds: seeds of those samples (kept apart from the seeds the ASR is measured on).
    """

    needs_original = True

    def __init__(
        self,
        mode: str = "n",
        num_tokens: int = 16,
        every: int = 3,
        with_prompt: bool = True,
        steps: int = 200,
        lr: float = 0.1,
        weight_decay: float = 0.1,
        steps_per_timestep: int = 1,
        images_per_step: int = 2,
        num_images: int = 4,
        check_every: int = 50,
        check_seeds: Sequence[int] = (10_000, 10_001),
    ):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)} (P4D-N, P4D-K), got {mode!r}")
        for key, value in (
            ("num_tokens", num_tokens),
            ("every", every),
            ("steps", steps),
            ("steps_per_timestep", steps_per_timestep),
            ("images_per_step", images_per_step),
            ("num_images", num_images),
        ):
            _positive_int(key, value)
        if not isinstance(with_prompt, bool):
            raise ValueError(f"with_prompt: expected true or false, got {with_prompt!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {lr!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {weight_decay!r}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"check_every: expected an integer >= 0, got {check_every!r}")
        self.mode, self.num_tokens, self.every, self.with_prompt = mode, num_tokens, every, with_prompt
        self.steps, self.lr, self.weight_decay = steps, float(lr), float(weight_decay)
        self.steps_per_timestep, self.images_per_step, self.num_images = steps_per_timestep, images_per_step, num_images
        self.check_every, self.check_seeds = check_every, [int(s) for s in check_seeds]
        self.name = f"p4d-{mode}"

    def text_for(self, prompt: str) -> str:
        """The prompt as attacked, with placeholders where the learned tokens go."""
        if self.mode == "k":
            return interleave(prompt, self.every)
        if not self.with_prompt:
            return " ".join([PLACEHOLDER] * self.num_tokens)
        return with_placeholders(prompt, self.num_tokens)

    def __call__(self, target: AttackTarget) -> list[AdversarialPrompt]:
        self.check(target)
        return [
            self.attack_prompt(target, prompt, i)
            for i, prompt in enumerate(tqdm(target.prompts, desc=self.name, unit="prompt"))
        ]

    def _images(self, target: AttackTarget, prompt: str) -> torch.Tensor:
        if target.target_images is not None or target.target_images_for is not None:
            return target.images_for(prompt)
        return original_images(target.original, prompt, range(IMAGE_SEED, IMAGE_SEED + self.num_images))

    def attack_prompt(self, target: AttackTarget, prompt: str, index: int = 0) -> AdversarialPrompt:
        model, original = target.model, target.original
        encoders = text_encoders(model.conditioner)
        text = self.text_for(prompt)
        k = text.split().count(PLACEHOLDER)
        for e in encoders:
            if e.placeholders_in(text) != k:
                key = "every" if self.mode == "k" else "num_tokens"
                raise ValueError(f"{key}: {k} learned tokens in {prompt!r} do not fit the text encoder's max length")
        g = torch.Generator().manual_seed(target.seed * 1_000_003 + index)
        with torch.no_grad():
            source_cond = original.conditioning_for([prompt])
        images = self._images(target, prompt)
        loss_fn = EpsMatchingLoss(
            model, original, source_cond, images, self.images_per_step, self.steps_per_timestep, g
        )

        first = encoders[0]
        table = first.weight.detach()  # (V, D)
        banned = first.banned_ids
        allowed = torch.ones(first.vocab_size, dtype=torch.bool)
        allowed[banned] = False
        pool = allowed.nonzero().squeeze(1)
        start_ids = pool[torch.randint(len(pool), (k,), generator=g)].tolist()
        embeddings = table[start_ids].float().clone().requires_grad_(True)  # E: (K, D), continuous
        optimizer = torch.optim.AdamW([embeddings], lr=self.lr, weight_decay=self.weight_decay)

        start, detected, step, loss = time.perf_counter(), False, 0, torch.tensor(float("nan"))
        for step in range(1, self.steps + 1):
            ids = nearest_rows(embeddings.detach(), table, banned)  # (K,)
            # forward: the projected rows; backward: their gradient lands on E (PEZ)
            rows = table[ids] + (embeddings - embeddings.detach()).to(table.dtype)
            # the other encoders read the same ids: their own rows, or the tokens' text (T5)
            with injected(model.conditioner, InjectedTokens(ids=ids.tolist(), vectors={0: rows})):
                loss = loss_fn(model.conditioning_for([text]))
            (grad,) = torch.autograd.grad(loss, [embeddings])
            embeddings.grad = grad
            optimizer.step()
            if self.check_every and step % self.check_every == 0:
                detected = _detects(target, text, self._ids(embeddings, table, banned), self.check_seeds)
                if detected:
                    break
        ids = self._ids(embeddings, table, banned)
        return AdversarialPrompt(
            source=prompt,
            text=text,
            tokens=InjectedTokens(ids=ids),
            readable=self._readable(first, text, ids),
            steps=step,
            seconds=time.perf_counter() - start,
            detected_during_search=detected,
            extra={"final_loss": float(loss.detach()), "start_ids": start_ids},
        )

    @staticmethod
    def _ids(embeddings: torch.Tensor, table: torch.Tensor, banned: Sequence[int]) -> list[int]:
        return nearest_rows(embeddings.detach(), table, banned).tolist()

    @staticmethod
    def _readable(encoder, text: str, ids: list[int]) -> str:
        """``text`` with the tokens written out, each run of placeholders decoded as one piece."""
        out, run, found = [], [], iter(ids)
        for word in [*text.split(), ""]:
            if word == PLACEHOLDER:
                run.append(next(found))
                continue
            if run:
                out.append(encoder.decode(run))
                run = []
            out.append(word)
        return " ".join(w for w in out if w)


@torch.no_grad()
def _detects(target: AttackTarget, text: str, ids: list[int], seeds: Sequence[int]) -> bool:
    """Whether the detector sees the concept in any sample of ``text`` with ``ids`` on ``seeds``."""
    if not seeds:
        return False
    with injected(target.model.conditioner, InjectedTokens(ids=ids)):
        images = target.model.generate([text] * len(seeds), seeds=list(seeds))
    return bool(target.detector(images).any())
