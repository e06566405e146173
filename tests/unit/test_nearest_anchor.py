"""scripts/bench/nearest_anchor.py: the anchor each concept's original images are closest to."""

from __future__ import annotations

import pytest
import torch

from tests.scripts import load_script


def test_distances_are_mean_squared_differences_without_the_diagonal():
    script = load_script("bench/nearest_anchor.py")
    zeros = torch.zeros(2, 1, 2, 2)
    latents = {"circle": zeros, "square": zeros + 1.0, "moon": zeros + 3.0}
    distances = script.pairwise_distances(latents)
    assert distances == {
        "circle": {"square": 1.0, "moon": 9.0},
        "square": {"circle": 1.0, "moon": 4.0},
        "moon": {"circle": 9.0, "square": 4.0},
    }
    assert script.nearest(distances) == {"circle": "square", "square": "circle", "moon": "square"}
    # a tie goes to the earlier concept
    assert script.nearest({"a": {"b": 1.0, "c": 1.0}}) == {"a": "b"}


def test_distances_need_the_same_images_for_every_concept():
    script = load_script("bench/nearest_anchor.py")
    with pytest.raises(ValueError, match=r"same \(N, C, H, W\), got \[\(1, 1, 2, 2\), \(2, 1, 2, 2\)\]"):
        script.pairwise_distances({"circle": torch.zeros(2, 1, 2, 2), "square": torch.zeros(1, 1, 2, 2)})
