"""Prompt triples for mask-based erasure: (concept prompt, its deconcept prompt, a keep prompt).

Every item is ``{"concept": p_c, "deconcept": p_d, "keep": p_k}``: the erase term makes
the masked model draw for p_c what the original draws for p_d (p_c without the concept),
and the preserve term keeps p_k unchanged. A DataLoader collates items into lists.

On the toy canvas the defaults cover the world: concept prompts are every caption template
of `JOINT_TEMPLATES` filled with the concept and every concept of the other kind ("a
striped circle", "a heart in striped style", ...), deconcept prompts come from
`remove_concept` ("a circle", "a striped object" for an erased object), or with
``anchor`` from `replace_concept` ("a striped square": concept ablation's anchor concept,
Kumari et al., ICCV 2023), and keep prompts
are the same templates on every cell that does not involve the concept. Other models need
explicit ``concept_prompts``, ``deconcept_prompts`` and ``keep_prompts``; a
``{concept}`` slot in them is filled in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from unlearn.data.canvas import CANVAS, CanvasSpec
from unlearn.data.captions import JOINT_TEMPLATES, fill_template, remove_concept, replace_concept

__all__ = ["ConceptPromptTriples", "canvas_prompt_sets"]


def canvas_prompt_sets(
    concept: str, spec: CanvasSpec = CANVAS, templates: Sequence[str] = JOINT_TEMPLATES
) -> tuple[list[str], list[str], list[str]]:
    """(concept prompts, their deconcept prompts, keep prompts) of a toy-canvas concept."""
    kind = spec.concept_kind(concept)  # ValueError listing the known concepts
    concept_prompts, keep_prompts = [], []
    for obj in spec.objects:
        for style in spec.styles:
            involved = (obj if kind == "object" else style) == concept
            for t in templates:
                (concept_prompts if involved else keep_prompts).append(fill_template(t, obj, style))
    return concept_prompts, [remove_concept(p, concept, spec) for p in concept_prompts], keep_prompts


class ConceptPromptTriples(Dataset):
    """``length`` items, item i drawn with ``np.random.default_rng((seed, i))`` (reproducible).

    Args:
        concept: the concept to erase.
        concept_prompts / deconcept_prompts: parallel lists (the canvas defaults if None;
            deconcept prompts default to `remove_concept` of the concept prompts on the canvas).
        keep_prompts: prompts to preserve (the canvas default if None).
        anchor: a concept to draw instead: deconcept prompts are the concept prompts with the
            concept replaced by it (not with explicit ``deconcept_prompts``).
        anchor_name: the config key ``anchor`` came from, named in its errors.
        length: items per epoch.
    """

    def __init__(
        self,
        concept: str,
        concept_prompts: Sequence[str] | None = None,
        deconcept_prompts: Sequence[str] | None = None,
        keep_prompts: Sequence[str] | None = None,
        length: int = 1000,
        seed: int = 0,
        spec: CanvasSpec = CANVAS,
        anchor: str | None = None,
        anchor_name: str = "deconcept_anchor",
    ):
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"concept: expected a non-empty string, got {concept!r}")
        if length < 1:
            raise ValueError(f"length: expected >= 1, got {length}")
        on_canvas = concept in spec.objects or concept in spec.styles
        if not on_canvas and (
            concept_prompts is None or (deconcept_prompts is None and anchor is None) or keep_prompts is None
        ):
            raise ValueError(
                f"concept {concept!r} is not a toy-canvas concept: give concept_prompts, deconcept_prompts (or "
                "deconcept_anchor) and keep_prompts explicitly"
            )
        defaults = canvas_prompt_sets(concept, spec) if on_canvas else ([], [], [])
        fill = lambda ps: [p.format(concept=concept) if "{concept}" in p else p for p in ps]
        self.concept_prompts = fill(concept_prompts) if concept_prompts is not None else defaults[0]
        if anchor is not None and deconcept_prompts is not None:
            raise ValueError(
                f"{anchor_name} and deconcept_prompts both given: the anchor makes the deconcept "
                "prompts; give one of them"
            )
        if anchor is not None:
            if not isinstance(anchor, str) or not anchor.strip():
                raise ValueError(f"{anchor_name}: expected a concept name, got {anchor!r}")
            self.deconcept_prompts = [
                replace_concept(p, concept, anchor, spec, anchor_name) for p in self.concept_prompts
            ]
        elif deconcept_prompts is not None:
            self.deconcept_prompts = fill(deconcept_prompts)
        elif concept_prompts is None:
            self.deconcept_prompts = defaults[1]
        else:
            self.deconcept_prompts = [remove_concept(p, concept, spec) for p in self.concept_prompts]
        self.keep_prompts = fill(keep_prompts) if keep_prompts is not None else defaults[2]
        if len(self.concept_prompts) != len(self.deconcept_prompts):
            raise ValueError(
                f"concept_prompts ({len(self.concept_prompts)}) and deconcept_prompts "
                f"({len(self.deconcept_prompts)}) must be parallel lists of the same length"
            )
        if not self.concept_prompts or not self.keep_prompts:
            raise ValueError("concept_prompts and keep_prompts must not be empty")
        self.concept = concept
        self.length = int(length)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, str]:
        rng = np.random.default_rng((self.seed, int(i)))
        c = int(rng.integers(len(self.concept_prompts)))
        k = int(rng.integers(len(self.keep_prompts)))
        return {
            "concept": self.concept_prompts[c],
            "deconcept": self.deconcept_prompts[c],
            "keep": self.keep_prompts[k],
        }
