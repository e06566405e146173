"""Ring-A-Bell (Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion
Models?", ICLR 2024).

Model-agnostic: only the text encoder is used, never the denoiser (the attack works on any model
that shares the text encoder). With f the text conditioning (the conditioner's ``crossattn``
output, (L, D), every text encoder's features side by side):

1. A concept vector ĉ = mean_i [f(P_i with the concept) − f(P_i without it)] over prompt pairs:
   the ``pairs`` param, else built from the target. On the toy canvas (the target has fields)
   each prompt's object and style fill every joint caption template ("a striped circle", "a
   circle in striped style", ...), paired with `remove_concept` of it ("a circle"; an object is
   replaced by "object"). Elsewhere, each prompt that names the concept pairs with itself without
   the word; a target whose prompts do not name the concept needs ``pairs`` (an error says so).
2. The goal of each prompt P: f(P) + η·ĉ.
3. A genetic search over prompts made of ``num_tokens`` tokens alone (the paper's candidates are
   the tokens only, without the source prompt), whose fitness is the distance ‖f(P̃) − goal‖₂:
   a population of random vocabulary tokens (start / end / padding and the placeholder
   excluded); every generation the best tenth (at least one) survives unchanged, the others are
   children of two parents drawn from the better half, by one-point crossover with probability
   ``crossover_rate`` (else a copy of the first parent), and each child has, with probability
   ``mutation_rate``, one random position replaced by a random token. The population is encoded
   in batches of ``batch_size`` prompts through the conditioner (tokens injected at placeholders).

The tokens are those of the first text encoder's vocabulary (CLIP's); an encoder of another
vocabulary (SD3's and Flux's T5) reads each candidate as its text (`unlearn.attacks.tokens`).
The result is hard tokens (`InjectedTokens` ids, and their text). The paper: population 200,
3,000 generations, mutation 0.25, crossover 0.5, η = 3 (nudity), 16 or 77 tokens; the defaults
here are sized for the toy model (whose text encoder holds 14 tokens). Draws are seeded from
``target.seed``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.tokens import PLACEHOLDER, InjectedTokens, TextEncoderAccess, injected, text_encoders
from unlearn.data.canvas import CANVAS, CanvasSpec
from unlearn.data.captions import JOINT_TEMPLATES, fill_template, fix_articles, mentions_concept, remove_concept

log = logging.getLogger(__name__)

__all__ = ["RingABell", "concept_pairs"]

SEQUENCE_KEY = "crossattn"


def _canvas(model) -> CanvasSpec:
    concepts = getattr(model, "canvas_concepts", None)
    return CanvasSpec(*map(tuple, concepts)) if concepts else CANVAS


def _without(prompt: str, concept: str, spec: CanvasSpec) -> str:
    """``prompt`` without ``concept``: `remove_concept` for a canvas concept, else the word dropped."""
    if concept in spec.objects or concept in spec.styles:
        return remove_concept(prompt, concept, spec)
    out = re.sub(rf"\b{re.escape(concept)}\b", "", prompt, flags=re.IGNORECASE)
    return fix_articles(re.sub(r"\s{2,}", " ", out).strip(" ,"))


def concept_pairs(target: AttackTarget) -> list[tuple[str, str]]:
    """[(with, without), ...] of the target's concept, as the module docstring says; [] if none."""
    spec = _canvas(target.model)
    pairs: list[tuple[str, str]] = []
    fields = target.fields or []
    if fields and all({"obj", "style"} <= set(f) for f in fields):
        for f in fields:
            for template in JOINT_TEMPLATES:
                text = fill_template(template, f["obj"], f["style"])
                pairs.append((text, _without(text, target.concept, spec)))
    else:
        pairs = [(p, _without(p, target.concept, spec)) for p in target.prompts if mentions_concept(p, target.concept)]
    return list(dict.fromkeys(p for p in pairs if p[0] != p[1]))


def _pairs_param(pairs) -> list[tuple[str, str]] | None:
    if pairs is None:
        return None
    ok = isinstance(pairs, Sequence) and not isinstance(pairs, str) and len(pairs) > 0
    ok = ok and all(
        isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 and all(isinstance(s, str) for s in p)
        for p in pairs
    )
    if not ok:
        raise ValueError(f"pairs: expected a non-empty list of [with, without] prompt pairs, got {pairs!r}")
    return [(p[0], p[1]) for p in pairs]


class RingABell(Attack):
    """Args:
    num_tokens: tokens of each candidate prompt (the paper: 16 or 77).
    eta: η, the concept vector's weight in the goal (the paper: 3 for nudity).
    population: candidates per generation (the paper: 200).
    generations: generations of the search (the paper: 3,000).
    mutation_rate: probability that a child gets one random token (the paper: 0.25).
    crossover_rate: probability that a child is a crossover of two parents (the paper: 0.5).
    pairs: [[with, without], ...] prompts for the concept vector; None: built from the target.
    batch_size: candidate prompts per conditioner call.
    """

    name = "ring_a_bell"

    def __init__(
        self,
        num_tokens: int = 8,
        eta: float = 3.0,
        population: int = 64,
        generations: int = 50,
        mutation_rate: float = 0.25,
        crossover_rate: float = 0.5,
        pairs: Sequence[Sequence[str]] | None = None,
        batch_size: int = 64,
    ):
        for key, value in (
            ("num_tokens", num_tokens),
            ("generations", generations),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if isinstance(population, bool) or not isinstance(population, int) or population < 2:
            raise ValueError(f"population: expected an integer >= 2, got {population!r}")
        for key, value in (("mutation_rate", mutation_rate), ("crossover_rate", crossover_rate)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{key}: expected a probability in [0, 1], got {value!r}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise ValueError(f"eta: expected a number, got {eta!r}")
        self.num_tokens, self.eta, self.population, self.generations = num_tokens, float(eta), population, generations
        self.mutation_rate, self.crossover_rate = float(mutation_rate), float(crossover_rate)
        self.pairs, self.batch_size = _pairs_param(pairs), batch_size

    @torch.no_grad()
    def __call__(self, target: AttackTarget) -> list[AdversarialPrompt]:
        self.check(target)
        model = target.model
        encoders = text_encoders(model.conditioner)
        text = " ".join([PLACEHOLDER] * self.num_tokens)
        if any(e.placeholders_in(text) != self.num_tokens for e in encoders):
            raise ValueError(f"num_tokens: {self.num_tokens} tokens do not fit the text encoder's max length")
        pairs = self.pairs or concept_pairs(target)
        if not pairs:
            raise ValueError(
                f"pairs: the prompts do not name {target.concept!r}; give [with, without] prompt pairs in the config"
            )
        vector = self.concept_vector(model, pairs)  # (L, D)
        results = []
        for i, prompt in enumerate(tqdm(target.prompts, desc=self.name, unit="prompt")):
            start = time.perf_counter()
            g = torch.Generator().manual_seed(target.seed * 1_000_003 + i)
            goal = self.encode(model, [prompt])[0] + self.eta * vector  # (L, D)
            ids, history = self.search(model, encoders, goal, g)
            results.append(
                AdversarialPrompt(
                    source=prompt,
                    text=text,
                    tokens=InjectedTokens(ids=ids),
                    readable=encoders[0].decode(ids),
                    steps=self.generations,
                    seconds=time.perf_counter() - start,
                    extra={"distance_start": history[0], "distance_end": history[-1], "pairs": len(pairs)},
                )
            )
        return results

    @torch.no_grad()
    def encode(self, model, texts: Sequence[str], tokens: InjectedTokens | None = None) -> torch.Tensor:
        """f: the text conditioning (B, L, D) of ``texts``, in float."""
        with injected(model.conditioner, tokens):
            cond = model.conditioning_for(list(texts))
        if SEQUENCE_KEY not in cond:
            raise ValueError(f"{self.name}: the conditioner gives no {SEQUENCE_KEY!r} text sequence ({sorted(cond)})")
        return cond[SEQUENCE_KEY].float()

    def concept_vector(self, model, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """ĉ (L, D): the mean of f(with) − f(without) over ``pairs``."""
        total = None
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s : s + self.batch_size]
            diff = self.encode(model, [w for w, _ in chunk]) - self.encode(model, [wo for _, wo in chunk])
            total = diff.sum(0) if total is None else total + diff.sum(0)
        return total / len(pairs)

    def distances(self, model, encoders: Sequence[TextEncoderAccess], ids: torch.Tensor, goal: torch.Tensor):
        """‖f(P̃) − goal‖₂ of each candidate, ids (N, K) -> (N,), in batches through the conditioner."""
        out = []
        text = " ".join([PLACEHOLDER] * ids.shape[1])
        for s in range(0, ids.shape[0], self.batch_size):
            chunk = ids[s : s + self.batch_size]
            f = self.encode(model, [text] * chunk.shape[0], InjectedTokens(ids=chunk.tolist()))  # (b, L, D)
            out.append(torch.linalg.vector_norm((f - goal).flatten(1), dim=1).cpu())
        return torch.cat(out)

    def search(
        self, model, encoders: Sequence[TextEncoderAccess], goal: torch.Tensor, generator: torch.Generator
    ) -> tuple[list[int], list[float]]:
        """The genetic search: (the best ids, the best distance after each generation, start first)."""
        g, n, k = generator, self.population, self.num_tokens
        allowed = torch.ones(encoders[0].vocab_size, dtype=torch.bool)
        allowed[encoders[0].banned_ids] = False
        pool = allowed.nonzero().squeeze(1)  # the tokens a candidate may hold

        def random_tokens(*shape: int) -> torch.Tensor:
            return pool[torch.randint(len(pool), shape, generator=g)]

        population = random_tokens(n, k)  # (N, K)
        dist = self.distances(model, encoders, population, goal)  # (N,)
        history = [float(dist.min())]
        n_elite, n_parents = max(1, n // 10), max(2, n // 2)
        for _ in range(self.generations):
            order = dist.argsort()
            elite, parents = population[order[:n_elite]], population[order[:n_parents]]
            m = n - n_elite
            first = parents[torch.randint(n_parents, (m,), generator=g)]  # (M, K)
            second = parents[torch.randint(n_parents, (m,), generator=g)]
            cut = torch.randint(1, max(k, 2), (m, 1), generator=g)  # one-point crossover after position cut
            crossed = torch.rand(m, 1, generator=g) < self.crossover_rate
            children = torch.where(crossed & (torch.arange(k)[None] >= cut), second, first)
            mutated = (torch.rand(m, generator=g) < self.mutation_rate).nonzero().squeeze(1)
            where = torch.randint(k, (len(mutated),), generator=g)
            children[mutated, where] = random_tokens(len(mutated))
            population = torch.cat([elite, children])
            dist = torch.cat([dist[order[:n_elite]], self.distances(model, encoders, children, goal)])
            history.append(float(dist.min()))
        best = population[dist.argmin()].tolist()
        log.info("%s: distance %.4g -> %.4g in %d generations", self.name, history[0], history[-1], self.generations)
        return best, history
