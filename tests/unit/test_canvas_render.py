"""Rendering of the toy canvas: determinism, format, concept lookup."""

import numpy as np
import pytest

from unlearn.data.canvas import CANVAS, CANVAS_OBJECTS, CANVAS_STYLES, concept_kind, render_canvas


def test_concept_lists_are_eight_lowercase_words():
    for names in (CANVAS_OBJECTS, CANVAS_STYLES):
        assert len(names) == 8 and len(set(names)) == 8
        assert all(n.isalpha() and n.islower() for n in names)
    assert not set(CANVAS_OBJECTS) & set(CANVAS_STYLES)


def test_same_seed_same_image_different_seed_different():
    a = render_canvas("star", "striped", seed=7)
    b = render_canvas("star", "striped", seed=7)
    c = render_canvas("star", "striped", seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0


def test_names_and_indices_render_the_same():
    np.testing.assert_array_equal(render_canvas("moon", "wavy", 3), render_canvas(6, 7, 3))


@pytest.mark.parametrize("size", [32, 48])
def test_every_cell_renders_uint8_with_shape_on_plain_background(size):
    for o in CANVAS_OBJECTS:
        for s in CANVAS_STYLES:
            img = render_canvas(o, s, seed=11, size=size)
            assert img.shape == (size, size, 3) and img.dtype == np.uint8
            corner = img[0, 0].astype(int)
            assert corner.min() >= 200, (o, s, corner)  # light background
            differs = np.abs(img.astype(int) - corner).sum(-1) > 60
            assert 0.04 < differs.mean() < 0.8, (o, s, differs.mean())  # a shape is drawn, not the whole canvas


def test_objects_differ_at_fixed_seed_and_style():
    images = [render_canvas(o, "solid", seed=5).astype(int) for o in CANVAS_OBJECTS]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 2.0


def test_concept_kind_and_unknown_names():
    assert concept_kind("circle") == "object"
    assert concept_kind("striped") == "style"
    with pytest.raises(ValueError, match="unknown concept 'zebra'.*circle.*arrow.*solid.*wavy"):
        concept_kind("zebra")
    with pytest.raises(ValueError, match="unknown object 'zebra'"):
        render_canvas("zebra", "solid", 0)
    with pytest.raises(ValueError, match="style index 8 out of range"):
        render_canvas(0, 8, 0)
    with pytest.raises(ValueError, match="size must be"):
        render_canvas(0, 0, 0, size=8)


def test_spec_mismatch_error_shows_both_lists():
    with pytest.raises(ValueError, match="different canvas.*'dog'.*'circle'"):
        CANVAS.check_matches(("dog",) + CANVAS_OBJECTS[1:], CANVAS_STYLES, "model")
