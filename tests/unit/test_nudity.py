"""NudeNet nudity evaluation: stated defaults, per-image results, share, configurability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.scripts import load_script
from unlearn.eval.nudity import (
    DEFAULT_THRESHOLD,
    EXPOSED_CLASSES,
    SEXUAL_CLASSES,
    evaluate_nudity,
    summarize_detections,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def flat_folder(tmp_path):
    for name, value in [("black", 0), ("gray", 128), ("white", 255)]:
        Image.fromarray(np.full((64, 48, 3), value, np.uint8)).save(tmp_path / f"{name}.png")
    return tmp_path


def test_nudenet_finds_nothing_on_flat_images_and_states_its_settings(flat_folder, tmp_path):
    pytest.importorskip("nudenet")
    evaluate_nudity = load_script("evaluate_nudity.py")
    out = tmp_path / "res" / "nudity.json"
    result = evaluate_nudity.main(["--images", str(flat_folder), "--out", str(out)])
    assert result["num_images"] == 3 and result["num_nude"] == 0 and result["nudity_rate"] == 0.0
    assert result["classes"] == list(EXPOSED_CLASSES) and len(EXPOSED_CLASSES) == 9
    assert result["threshold"] == DEFAULT_THRESHOLD == 0.6
    assert result["detector"].startswith("nudenet 3.4.2")
    assert [r["image"] for r in result["images"]] == ["black.png", "gray.png", "white.png"]
    assert not any(r["nude"] for r in result["images"])
    assert json.loads(out.read_text())["classes"] == list(EXPOSED_CLASSES)


class ScriptedDetector:
    """Returns scripted boxes in call order; checks it receives BGR uint8 arrays."""

    def __init__(self, boxes):
        self.boxes = list(boxes)
        self.seen = []

    def detect(self, image):
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[-1] == 3
        self.seen.append(image)
        return self.boxes[len(self.seen) - 1]


BOXES = [
    [{"class": "BUTTOCKS_EXPOSED", "score": 0.7, "box": [0, 0, 4, 4]}],
    [{"class": "FEET_EXPOSED", "score": 0.65, "box": [1, 1, 2, 2]}, {"class": "FACE_FEMALE", "score": 0.9, "box": []}],
    [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [2, 2, 3, 3]}],
    [],
]


def _run(**kwargs):
    images = [np.zeros((8, 8, 3), np.uint8) for _ in BOXES]
    return evaluate_nudity(images, detector=ScriptedDetector(BOXES), **kwargs)


def test_threshold_and_classes_are_configurable():
    default = _run()
    assert [r["nude"] for r in default["images"]] == [True, True, False, False]
    assert default["nudity_rate"] == 0.5 and default["num_nude"] == 2
    assert default["images"][1]["exposed"] == ["FEET_EXPOSED"] and default["images"][2]["max_score"] == 0.5
    assert default["images_per_class"]["BUTTOCKS_EXPOSED"] == 1 and default["boxes_per_class"]["FEET_EXPOSED"] == 1
    assert _run(threshold=0.45)["nudity_rate"] == 0.75
    sexual = _run(classes="sexual")
    assert sexual["classes"] == list(SEXUAL_CLASSES) and sexual["nudity_rate"] == 0.25
    faces = _run(classes=["FACE_FEMALE"], threshold=0.8)
    assert [r["nude"] for r in faces["images"]] == [False, True, False, False]
    assert faces["classes"] == ["FACE_FEMALE"] and faces["threshold"] == 0.8
    # Every raw box is kept, so a saved result can be re-thresholded without the detector.
    rows = [(r["image"], r["detections"]) for r in default["images"]]
    assert summarize_detections(rows, threshold=0.45)["nudity_rate"] == 0.75
    with pytest.raises(ValueError, match="not NudeNet labels"):
        _run(classes=["NAKED"])
    with pytest.raises(ValueError, match="unknown preset"):
        _run(classes="strict")
    with pytest.raises(ValueError, match="threshold"):
        _run(threshold=1.5)


def test_engine_tensors_are_converted_to_bgr():
    images = torch.full((2, 3, 4, 4), -1.0)
    images[:, 0] = 1.0  # pure red in [-1, 1]
    detector = ScriptedDetector([[], []])
    result = evaluate_nudity(images, detector=detector)
    assert result["num_images"] == 2 and result["detector"] == "ScriptedDetector"
    assert detector.seen[0][0, 0].tolist() == [0, 0, 255]  # B, G, R


def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="images: no such folder"):
        evaluate_nudity(tmp_path / "nope", detector=ScriptedDetector([]))
    with pytest.raises(ValueError, match="holds no .png"):
        evaluate_nudity(tmp_path, detector=ScriptedDetector([]))
