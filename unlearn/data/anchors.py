"""Anchor prompts: every training prompt paired with the prompt that stands in for its concept.

Concept ablation (Kumari et al., ICCV 2023) trains the concept prompt c* to predict what the
original model draws for its anchor prompt c; UCE (Gandikota et al., WACV 2024) maps the
concept prompt's text embeddings onto its guide prompt's. Both pair each training prompt with
an anchor prompt, made here from the prompt itself:

* on the toy canvas, the concept replaced by an anchor concept of the same kind
  ("a striped circle" -> "a dotted circle", `replace_concept`), or, with no anchor, removed
  ("something in striped style" -> "something", "a circle" -> "an object", `remove_concept`);
* elsewhere, the concept phrase replaced by the anchor text ("Van Gogh Style" with anchor
  "painting" -> "painting Style", "An image of cat" with anchor "dog" -> "An image of dog");
  there the anchor must be named;
* or given as they are (``anchor_prompts``, one per training prompt, in order).

Errors are ValueErrors that start with the config key at fault (``key``).
"""

from __future__ import annotations

from collections.abc import Sequence

from unlearn.data.canvas import CanvasSpec
from unlearn.data.captions import mentions_concept, remove_concept, replace_concept
from unlearn.data.prompts import split_concepts

__all__ = ["split_anchors", "anchor_prompts", "pair_anchor_prompts"]

# A spec that knows no concept: replace_concept then swaps the phrase without canvas checks.
_NO_CANVAS = CanvasSpec(objects=(), styles=())


def split_anchors(
    anchor: str | Sequence[str] | None, concepts: Sequence[str], separator: str | None, key: str
) -> list[str | None]:
    """One anchor per concept: ``anchor`` split like ``concept`` (one for all, or one each); None: none."""
    if anchor is None:
        return [None] * len(concepts)
    try:
        items = split_concepts(anchor, separator)
    except ValueError as err:
        raise ValueError(f"{key}: {str(err).split(': ', 1)[-1]}") from None
    if len(items) == 1:
        return items * len(concepts)
    if len(items) != len(concepts):
        raise ValueError(
            f"{key}: {len(items)} anchors {items} for {len(concepts)} concepts {list(concepts)}; "
            "give one anchor for all, or one per concept (split by the same separator)"
        )
    return items


def _anchored(prompt: str, concept: str, anchor: str | None, canvas: CanvasSpec | None, key: str) -> str:
    on_canvas = canvas is not None and (concept in canvas.objects or concept in canvas.styles)
    if anchor is None:
        if not on_canvas:
            raise ValueError(
                f"{key}: missing: {concept!r} is not a toy canvas concept, so its anchor must be named "
                "(e.g. anchor=painting for an artist's style, anchor=dog for concept cat)"
            )
        return remove_concept(prompt, concept, canvas)
    return replace_concept(prompt, concept, anchor, canvas if on_canvas else _NO_CANVAS, key)


def anchor_prompts(
    prompts: Sequence[str],
    concepts: Sequence[str],
    anchors: Sequence[str | None],
    canvas: CanvasSpec | None,
    key: str = "anchor",
) -> list[str]:
    """The anchor prompt of each of ``prompts``: each concept it names replaced by its anchor (or removed).

    ``anchors[i]`` is the anchor of ``concepts[i]`` (None: removed, toy canvas only); ``canvas``
    is the model's toy canvas or None. A prompt that names none of the concepts is an error.
    """
    out = []
    for prompt in prompts:
        named = [(c, a) for c, a in zip(concepts, anchors) if mentions_concept(prompt, c)]
        if not named:
            raise ValueError(
                f"{key}: the training prompt {prompt!r} names none of the concepts {list(concepts)}, so it has "
                "no anchor to put in; give the anchor prompts themselves (anchor_prompts)"
            )
        for concept, anchor in named:
            prompt = _anchored(prompt, concept, anchor, canvas, key)
        out.append(prompt)
    return out


def pair_anchor_prompts(
    prompts: Sequence[str],
    concepts: Sequence[str],
    anchor: str | Sequence[str] | None,
    given: Sequence[str] | None,
    separator: str | None,
    canvas: CanvasSpec | None,
    prefix: str = "model.params",
) -> list[str]:
    """The anchor prompts of ``prompts``: ``given`` (the ``anchor_prompts`` key) as they are, else
    made from ``anchor`` (the ``anchor`` key) by `anchor_prompts`."""
    if given is not None:
        if anchor is not None:
            raise ValueError(f"{prefix}.anchor_prompts: give anchor or anchor_prompts, not both")
        if isinstance(given, str) or not all(isinstance(p, str) for p in given):
            raise ValueError(f"{prefix}.anchor_prompts: expected a list of prompts, got {given!r}")
        if len(given) != len(prompts):
            raise ValueError(
                f"{prefix}.anchor_prompts: {len(given)} prompts for {len(prompts)} training prompts "
                f"{list(prompts)[:4]}; give one per training prompt, in the same order"
            )
        return list(given)
    anchors = split_anchors(anchor, concepts, separator, f"{prefix}.anchor")
    return anchor_prompts(prompts, concepts, anchors, canvas, f"{prefix}.anchor")
