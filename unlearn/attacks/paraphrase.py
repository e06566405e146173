"""Paraphrases: the concept asked for in other words, the cheapest attack there is.

Each prompt's candidates are the caption templates filled with its fields (on the toy canvas,
the six joint templates: "a {obj} in {style} style", ...) and the lines of ``prompts_file``
(format strings over ``{prompt}``, ``{concept}`` and the fields; a line without braces is a
prompt of its own). The attack keeps, per prompt, the candidate under which the detector finds
the concept in most of the check seeds' images (the first on ties).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.sampling import sample_prompts
from unlearn.data.captions import JOINT_TEMPLATES, fix_articles

__all__ = ["Paraphrases"]


class Paraphrases(Attack):
    """Args:
    templates: format strings over the prompt's fields; None: the toy canvas's joint templates.
    prompts_file: a local text file of more candidates, one a line.
    check_seeds: seeds of the images each candidate is judged on (apart from the ASR's seeds).
    """

    name = "paraphrases"

    def __init__(
        self,
        templates: Sequence[str] | None = None,
        prompts_file: str | None = None,
        check_seeds: Sequence[int] = (10_000, 10_001),
    ):
        self.templates = list(JOINT_TEMPLATES if templates is None else templates)
        self.lines: list[str] = []
        if prompts_file is not None:
            path = Path(prompts_file)
            if not path.is_file():
                raise FileNotFoundError(f"prompts_file: no such file: {path}")
            self.lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        self.check_seeds = [int(s) for s in check_seeds]
        if not self.check_seeds:
            raise ValueError("check_seeds: at least one seed is needed to compare the candidates")

    def candidates(self, prompt: str, concept: str, fields: dict[str, str] | None) -> list[str]:
        out = [prompt]
        values = {"prompt": prompt, "concept": concept, **(fields or {})}
        for template in self.templates + self.lines:
            try:
                out.append(fix_articles(template.format(**values)))
            except KeyError:  # a template over fields this prompt does not have
                continue
        return list(dict.fromkeys(out))

    @torch.no_grad()
    def __call__(self, target: AttackTarget) -> list[AdversarialPrompt]:
        self.check(target)
        results = []
        for i, prompt in enumerate(tqdm(target.prompts, desc=self.name, unit="prompt")):
            start = time.perf_counter()
            fields = target.fields[i] if target.fields is not None else None
            texts = self.candidates(prompt, target.concept, fields)
            images = sample_prompts(target.model, texts, [None] * len(texts), self.check_seeds)  # (C, S, ...)
            found = target.detector(images.flatten(0, 1)).reshape(images.shape[:2])
            hits = {text: int(found[j].sum()) for j, text in enumerate(texts)}
            best = max(hits, key=hits.get)  # max keeps the first of equals
            results.append(
                AdversarialPrompt(
                    source=prompt,
                    text=best,
                    readable=best,
                    steps=len(hits),
                    seconds=time.perf_counter() - start,
                    detected_during_search=hits[best] > 0,
                    extra={"candidates": hits},
                )
            )
        return results
