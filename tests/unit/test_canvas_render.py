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


PATTERNS = ("striped", "wavy", "checkered", "dotted")


@pytest.mark.parametrize("style", PATTERNS)
def test_patterns_are_anchored_to_the_shape(style):
    # A pattern is a function of the shape's placement alone (no random angle or phase), and
    # moves with the shape: the base model can then read it off the shape, as an outline.
    from unlearn.data.textures import STYLE_FILLS, Placement

    fill = STYLE_FILLS[style]
    a, b = np.array([1.0, 0.0, 0.0], np.float32), np.array([0.0, 0.0, 1.0], np.float32)
    place = Placement(size=32, cx=14.0, cy=15.0, radius=11.0, angle=0.3)
    first = fill(np.random.default_rng(0), place, a, b)
    np.testing.assert_array_equal(first, fill(np.random.default_rng(1), place, a, b))
    moved = fill(np.random.default_rng(0), Placement(32, 17.0, 15.0, 11.0, 0.3), a, b)
    np.testing.assert_allclose(moved[:, 3:], first[:, :-3], atol=1e-5)


def test_stripes_are_vertical_several_pixels_wide_and_shaded_from_the_shape_colour():
    from unlearn.data.textures import PATTERN_SHADE, STYLE_FILLS, Placement

    a, b = np.array([1.0, 1.0, 1.0], np.float32), np.zeros(3, np.float32)
    stripes = STYLE_FILLS["striped"](np.random.default_rng(0), Placement(32, 16.0, 16.0, 11.0, 0.0), a, b)[..., 0]
    np.testing.assert_allclose(stripes, np.broadcast_to(stripes[0], stripes.shape))  # constant down a column
    row = stripes[16] > 0.5
    edges = np.flatnonzero(row[1:] != row[:-1])
    assert len(edges) >= 4 and np.diff(edges).min() >= 3  # period 0.75 * 11 = 8.25 px
    # The second colour follows from the first (b is ignored), so the pattern's contrast does too.
    assert stripes.max() == pytest.approx(1.0) and stripes.min() == pytest.approx(PATTERN_SHADE)
