"""Caption templates, the evaluation prompt and concept removal."""

import numpy as np
import pytest

from unlearn.data.canvas import CANVAS_OBJECTS, CANVAS_STYLES
from unlearn.data.captions import (
    JOINT_TEMPLATES,
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    eval_prompt,
    make_caption,
    mentions_concept,
    remove_concept,
    replace_concept,
)


def test_eval_prompt_and_articles():
    assert eval_prompt("circle", "striped") == "a striped circle"
    assert eval_prompt("arrow", "outlined") == "an outlined arrow"
    assert eval_prompt(7, 0) == "a solid arrow"


def test_modes_name_the_right_concepts():
    rng = np.random.default_rng(0)
    for _ in range(50):
        joint = make_caption("heart", "dotted", rng, "joint")
        assert "heart" in joint and "dotted" in joint
        obj = make_caption("heart", "dotted", rng, "object")
        assert "heart" in obj and "dotted" not in obj
        sty = make_caption("heart", "dotted", rng, "style")
        assert "dotted" in sty and "heart" not in sty


def test_every_template_is_used_and_mixed_ratios_hold():
    rng = np.random.default_rng(1)
    seen = {make_caption("square", "wavy", rng, "joint") for _ in range(300)}
    assert len(seen) == len(JOINT_TEMPLATES)
    captions = [make_caption("square", "wavy", rng, "mixed", object_prob=0.2, style_prob=0.3) for _ in range(4000)]
    object_only = np.mean(["wavy" not in c for c in captions])
    style_only = np.mean(["square" not in c for c in captions])
    assert abs(object_only - 0.2) < 0.03 and abs(style_only - 0.3) < 0.03


def test_caption_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="caption mode"):
        make_caption("circle", "solid", rng, "poem")
    with pytest.raises(ValueError, match="object_prob"):
        make_caption("circle", "solid", rng, "mixed", object_prob=0.8, style_prob=0.5)


@pytest.mark.parametrize(
    "prompt, concept, expected",
    [
        ("a striped circle", "striped", "a circle"),
        ("a circle in striped style", "striped", "a circle"),
        ("an image of a circle, striped pattern", "striped", "an image of a circle"),
        ("a circle with a striped texture", "striped", "a circle"),
        ("an outlined arrow", "outlined", "an arrow"),
        ("a striped circle", "circle", "a striped object"),
        ("an image of a circle", "circle", "an image of an object"),
        ("a solid arrow", "arrow", "a solid object"),
        ("something in noisy style", "noisy", "something"),
        ("a striped circle", "dotted", "a striped circle"),
    ],
)
def test_remove_concept(prompt, concept, expected):
    assert remove_concept(prompt, concept) == expected


def test_remove_concept_clears_every_template():
    for o in CANVAS_OBJECTS:
        for s in CANVAS_STYLES:
            for t in JOINT_TEMPLATES + OBJECT_TEMPLATES + STYLE_TEMPLATES:
                prompt = t.format(obj=o, style=s)
                no_style = remove_concept(prompt, s)
                no_obj = remove_concept(prompt, o)
                assert not mentions_concept(no_style, s) and not mentions_concept(no_obj, o)
                if "{obj}" in t:
                    assert mentions_concept(no_style, o), (prompt, no_style)
                if "{style}" in t:
                    assert mentions_concept(no_obj, s), (prompt, no_obj)


def test_remove_unknown_concept_lists_known():
    with pytest.raises(ValueError, match="known objects.*known styles"):
        remove_concept("a striped circle", "zebra")


@pytest.mark.parametrize(
    "prompt,concept,anchor,expected",
    [
        ("a striped circle", "circle", "arrow", "a striped arrow"),
        ("an image of a circle, solid pattern", "circle", "square", "an image of a square, solid pattern"),
        ("a heart in striped style", "striped", "outlined", "a heart in outlined style"),
        ("Van Gogh painting of a house", "Van Gogh", "Monet", "Monet painting of a house"),  # off the canvas
    ],
)
def test_replace_concept(prompt, concept, anchor, expected):
    assert replace_concept(prompt, concept, anchor) == expected


@pytest.mark.parametrize(
    "concept,anchor,match",
    [
        ("circle", "circle", "'circle' is the erased concept itself"),
        ("circle", "blob", r"'blob' is not a toy canvas object; choose from \['circle'"),
        ("circle", "striped", "'striped' is a toy style, 'circle' a toy object; anchor to another object"),
    ],
)
def test_replace_concept_refuses_bad_anchors(concept, anchor, match):
    with pytest.raises(ValueError, match="deconcept_anchor: " + match):
        replace_concept("a striped circle", concept, anchor)
