"""Captions of toy-world images, the fixed evaluation prompt, and concept removal.

Templates use ``{obj}`` and ``{style}`` slots; articles ("a"/"an") are fixed afterwards so
"a outlined arrow" never appears.

Concept removal ("deconcept"), used by erasure methods to build the anchor prompt of an
erased concept (ESD's unconditional/neutral direction, concept-ablation anchors):

* a **style** is removed with the words that only exist to carry it ("in striped style",
  ", striped pattern", "with a striped texture", "striped"), so "a striped circle" ->
  "a circle" and "a circle in striped style" -> "a circle";
* an **object** is replaced by the neutral noun ``OBJECT_PLACEHOLDER`` ("object") rather
  than deleted, so the prompt stays grammatical and keeps its style: "a striped circle"
  -> "a striped object", "an image of a circle" -> "an image of an object".
"""

from __future__ import annotations

import re

import numpy as np

from unlearn.data.canvas import CANVAS, CanvasSpec

__all__ = [
    "JOINT_TEMPLATES",
    "OBJECT_TEMPLATES",
    "STYLE_TEMPLATES",
    "CAPTION_MODES",
    "OBJECT_PLACEHOLDER",
    "make_caption",
    "eval_prompt",
    "mentions_concept",
    "remove_concept",
    "replace_concept",
    "fix_articles",
    "fill_template",
]

JOINT_TEMPLATES: tuple[str, ...] = (
    "a {style} {obj}",
    "a {obj} in {style} style",
    "an image of a {obj}, {style} pattern",
    "a {style} style {obj}",
    "a picture of a {style} {obj}",
    "a {obj} with a {style} texture",
)
OBJECT_TEMPLATES: tuple[str, ...] = ("a {obj}", "an image of a {obj}", "a picture of a {obj}")
STYLE_TEMPLATES: tuple[str, ...] = ("something in {style} style", "an image in {style} style", "a {style} pattern")
CAPTION_MODES: tuple[str, ...] = ("joint", "object", "style", "mixed")
OBJECT_PLACEHOLDER = "object"

_ARTICLE = re.compile(r"\b([Aa]n?) (\w)")


def fix_articles(text: str) -> str:
    """Use "an" before a vowel and "a" otherwise: "a outlined arrow" -> "an outlined arrow"."""

    def repl(m: re.Match[str]) -> str:
        article = "an" if m.group(2).lower() in "aeiou" else "a"
        if m.group(1)[0].isupper():
            article = article.capitalize()
        return f"{article} {m.group(2)}"

    return _ARTICLE.sub(repl, text)


def fill_template(template: str, obj: str, style: str) -> str:
    """One caption: ``template`` with its {obj} and {style} filled in and the articles fixed."""
    return fix_articles(template.format(obj=obj, style=style))


def make_caption(
    obj: str | int,
    style: str | int,
    rng: np.random.Generator,
    mode: str = "joint",
    object_prob: float = 0.1,
    style_prob: float = 0.1,
    spec: CanvasSpec = CANVAS,
) -> str:
    """A caption for an image of ``obj`` in ``style``.

    Args:
        mode: ``"joint"`` names both, ``"object"`` only the object, ``"style"`` only the
            style; ``"mixed"`` picks object-only with ``object_prob``, style-only with
            ``style_prob`` and joint otherwise.
        rng: source of the template choice (and of the mode choice when mixed).
    """
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption mode must be one of {CAPTION_MODES}, got {mode!r}")
    if mode == "mixed":
        if object_prob < 0 or style_prob < 0 or object_prob + style_prob > 1:
            raise ValueError(
                f"need object_prob, style_prob >= 0 with sum <= 1, "
                f"got object_prob={object_prob}, style_prob={style_prob}"
            )
        r = rng.uniform()
        mode = "object" if r < object_prob else "style" if r < object_prob + style_prob else "joint"
    obj_name = spec.objects[spec.object_index(obj)]
    style_name = spec.styles[spec.style_index(style)]
    templates = {"joint": JOINT_TEMPLATES, "object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}[mode]
    return fill_template(templates[int(rng.integers(len(templates)))], obj_name, style_name)


def eval_prompt(obj: str | int, style: str | int, spec: CanvasSpec = CANVAS) -> str:
    """The fixed evaluation prompt of a cell, e.g. ``"a striped circle"``."""
    return fill_template(JOINT_TEMPLATES[0], spec.objects[spec.object_index(obj)], spec.styles[spec.style_index(style)])


def _word(concept: str) -> str:
    return rf"\b{re.escape(concept)}\b"


def mentions_concept(prompt: str, concept: str) -> bool:
    """Whether ``prompt`` names ``concept`` as a whole word (case-insensitive)."""
    return re.search(_word(concept), prompt, flags=re.IGNORECASE) is not None


def remove_concept(prompt: str, concept: str, spec: CanvasSpec = CANVAS) -> str:
    """``prompt`` with ``concept`` removed (style) or replaced by "object" (object).

    A prompt that does not mention the concept comes back unchanged. Unknown concept names
    raise a ValueError listing the known objects and styles.
    """
    kind = spec.concept_kind(concept)
    w = _word(concept)
    if kind == "object":
        out = re.sub(w, OBJECT_PLACEHOLDER, prompt, flags=re.IGNORECASE)
    else:
        patterns = (
            rf"\s*,?\s*\b(?:in|with)\s+(?:an?\s+)?{w}\s+(?:style|pattern|texture)\b",  # "in striped style"
            rf"\s*,\s*{w}\s+(?:style|pattern|texture)\b",  # ", striped pattern"
            rf"{w}\s+(?:style\s+)?",  # "striped circle", "striped style circle"
            w,  # anything left, e.g. at the end of a prompt
        )
        out = prompt
        for pattern in patterns:
            out = re.sub(pattern, "", out, flags=re.IGNORECASE)
    return fix_articles(re.sub(r"\s{2,}", " ", out).strip(" ,"))


def replace_concept(
    prompt: str, concept: str, anchor: str, spec: CanvasSpec = CANVAS, name: str = "deconcept_anchor"
) -> str:
    """``prompt`` with ``concept`` replaced by ``anchor``, a concept of the same kind on the canvas
    ("a striped circle" -> "a striped square"): the anchor target of concept ablation.

    Off the canvas (a concept the spec does not know) the phrase is replaced as it is.
    Anchoring a concept to itself or to one of the other kind is a ValueError naming ``name``
    (the config key the anchor came from).
    """
    if anchor.strip().lower() == concept.strip().lower():
        raise ValueError(f"{name}: {anchor!r} is the erased concept itself")
    known = set(spec.objects) | set(spec.styles)
    if concept in known:
        kind = spec.concept_kind(concept)
        if anchor not in known:
            raise ValueError(
                f"{name}: {anchor!r} is not a toy canvas {kind}; "
                f"choose from {list(spec.objects if kind == 'object' else spec.styles)}"
            )
        anchor_kind = spec.concept_kind(anchor)
        if kind != anchor_kind:
            raise ValueError(
                f"{name}: {anchor!r} is a toy {anchor_kind}, {concept!r} a toy {kind}; anchor to another {kind}"
            )
    return fix_articles(re.sub(_word(concept), anchor, prompt, flags=re.IGNORECASE))
