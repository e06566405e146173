"""UnlearnDiffAtk (Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are
Still Easy To Generate Unsafe Images ... For Now", ECCV 2024).

The erased model is its own classifier: ``num_tokens`` prefix tokens are searched so that,
under the prompt, the model denoises images of the concept best (`DenoisingLoss`). Each token
is a distribution over the vocabulary (logits θ, K × V); the forward pass uses the real token
of its argmax (one-hot × the embedding table: a hard token, so the found prompt is text) and
the gradient flows through the softmax (straight-through). Adam (lr 0.01); noise level, noise
and images are redrawn every ``steps_per_timestep`` steps; every ``check_every`` steps the
current hard prompt is sampled and the search stops as soon as the detector sees the concept.

The tokens are searched in the first text encoder's vocabulary (CLIP's); encoders that share it
take the relaxed one-hot rows, and an encoder of another vocabulary (SD3's and Flux's T5) reads
the current tokens as text (`unlearn.attacks.tokens`): it sees what the found prompt gives, but
no gradient reaches the logits through it.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.denoising import DenoisingLoss
from unlearn.attacks.tokens import InjectedTokens, injected, text_encoders, with_placeholders

log = logging.getLogger(__name__)

__all__ = ["UnlearnDiffAtk"]


class UnlearnDiffAtk(Attack):
    """Args:
    num_tokens: prefix tokens K (the paper: 5).
    steps: optimisation steps per prompt.
    lr: Adam learning rate (the paper: 0.01).
    steps_per_timestep: steps between new noise levels (the paper: 40).
    images_per_step: target images in each step's loss.
    check_every: steps between samples of the current prompt for the detector (0: never;
        the search then runs all ``steps``).
    check_seeds: seeds of those samples (kept apart from the seeds the ASR is measured on).
    """

    name = "unlearndiffatk"
    needs_images = True

    def __init__(
        self,
        num_tokens: int = 5,
        steps: int = 120,
        lr: float = 0.01,
        steps_per_timestep: int = 40,
        images_per_step: int = 4,
        check_every: int = 40,
        check_seeds: list[int] | tuple[int, ...] = (10_000, 10_001),
    ):
        for key, value in (
            ("num_tokens", num_tokens),
            ("steps", steps),
            ("steps_per_timestep", steps_per_timestep),
            ("images_per_step", images_per_step),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if not lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {lr!r}")
        self.num_tokens, self.steps, self.lr = num_tokens, steps, float(lr)
        self.steps_per_timestep, self.images_per_step = steps_per_timestep, images_per_step
        self.check_every, self.check_seeds = int(check_every), [int(s) for s in check_seeds]

    def __call__(self, target: AttackTarget) -> list[AdversarialPrompt]:
        self.check(target)
        return [
            self.attack_prompt(target, prompt, i)
            for i, prompt in enumerate(tqdm(target.prompts, desc=self.name, unit="prompt"))
        ]

    def attack_prompt(self, target: AttackTarget, prompt: str, index: int = 0) -> AdversarialPrompt:
        model = target.model
        encoders = text_encoders(model.conditioner)
        first = encoders[0]  # the tokens are searched in its vocabulary
        shared = [i for i, e in enumerate(encoders) if e.shares_vocabulary(first)]
        g = torch.Generator().manual_seed(target.seed * 1_000_003 + index)
        logits = (1e-3 * torch.randn(self.num_tokens, first.vocab_size, generator=g)).to(model.device)
        logits.requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=self.lr)
        # Start / end / padding tokens and the placeholder itself are never chosen.
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        banned[first.banned_ids] = True
        loss_fn = DenoisingLoss(model, target.images_for(prompt), self.images_per_step, self.steps_per_timestep, g)
        text = with_placeholders(prompt, self.num_tokens)
        start, detected, step = time.perf_counter(), False, 0
        for step in range(1, self.steps + 1):
            soft = F.softmax(logits.masked_fill(banned, -float("inf")), dim=-1)  # (K, V)
            picked = soft.argmax(dim=-1)  # (K,)
            hard = F.one_hot(picked, soft.shape[-1]).to(soft.dtype)
            choice = hard + soft - soft.detach()  # forward: real tokens; backward: through the softmax
            # Encoders of another vocabulary (T5 beside CLIP) read the forward's tokens as text, without a gradient.
            tokens = InjectedTokens(ids=picked.tolist(), vectors={i: choice @ encoders[i].weight for i in shared})
            with injected(model.conditioner, tokens):
                loss = loss_fn(model.conditioning_for([text]))
            # Only the logits get a gradient: a model whose own weights train (adversarial erasure)
            # must not collect the attack's.
            (logits.grad,) = torch.autograd.grad(loss, [logits])
            optimizer.step()
            if self.check_every and step % self.check_every == 0:
                detected = self._detects(target, text, self._ids(logits, banned))
                if detected:
                    break
        ids = self._ids(logits, banned)
        return AdversarialPrompt(
            source=prompt,
            text=text,
            tokens=InjectedTokens(ids=ids),
            readable=f"{first.decode(ids)} {prompt}",
            steps=step,
            seconds=time.perf_counter() - start,
            detected_during_search=detected,
            extra={"final_loss": float(loss.detach())},
        )

    @staticmethod
    def _ids(logits: torch.Tensor, banned: torch.Tensor) -> list[int]:
        return logits.detach().masked_fill(banned, -float("inf")).argmax(dim=-1).tolist()

    @torch.no_grad()
    def _detects(self, target: AttackTarget, text: str, ids: list[int]) -> bool:
        if not self.check_seeds:
            return False
        with injected(target.model.conditioner, InjectedTokens(ids=ids)):
            images = target.model.generate([text] * len(self.check_seeds), seeds=self.check_seeds)
        return bool(target.detector(images).any())
