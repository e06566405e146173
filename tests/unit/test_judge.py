"""The shipped canvas judge and judge checkpoint loading."""

from pathlib import Path

import pytest
import torch

from unlearn.data.canvas import CANVAS_OBJECTS, CANVAS_STYLES
from unlearn.eval.judge import CanvasJudge, load_judge, save_judge
from unlearn.eval.judge_training import held_out_accuracy

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "toy" / "judge.safetensors"


@pytest.fixture(scope="module")
def shipped_judge() -> CanvasJudge:
    return load_judge(SHIPPED, expected_objects=CANVAS_OBJECTS, expected_styles=CANVAS_STYLES)


def test_shipped_judge_is_small_and_records_its_canvas(shipped_judge):
    assert SHIPPED.stat().st_size < 5 * 2**20
    assert shipped_judge.objects == CANVAS_OBJECTS and shipped_judge.styles == CANVAS_STYLES
    assert 100_000 <= sum(p.numel() for p in shipped_judge.parameters()) <= 500_000
    assert not shipped_judge.training


def test_shipped_judge_scores_fresh_images(shipped_judge):
    # Seed 99 is neither the training seed (0) nor the card's held-out seed.
    acc = held_out_accuracy(shipped_judge, 512, seed=99)
    assert acc["object_acc"] >= 0.98 and acc["style_acc"] >= 0.98, acc


def test_forward_and_features_shapes():
    judge = CanvasJudge(widths=(8, 8, 8, 16)).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    obj, style = judge(x)
    assert obj.shape == (4, 8) and style.shape == (4, 8)
    assert judge.features(x).shape == (4, 16)
    assert judge.features(torch.zeros(2, 3, 64, 64)).shape == (2, 16)  # resized to 32
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        judge(torch.zeros(2, 1, 32, 32))


def test_save_load_roundtrip(tmp_path):
    judge = CanvasJudge(widths=(8, 8, 8, 16)).eval()
    path = save_judge(judge, tmp_path / "j.safetensors")
    loaded = load_judge(path)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    for a, b in zip(judge(x), loaded(x)):
        torch.testing.assert_close(a, b)
    assert loaded.widths == (8, 8, 8, 16)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_judge(missing)


def test_corrupt_file_names_the_path(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_judge(bad)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(SHIPPED.read_bytes()[:5000])
    with pytest.raises(ValueError, match="trunc.safetensors"):
        load_judge(truncated)


def test_different_canvas_is_refused(tmp_path):
    objects = ("dog",) + CANVAS_OBJECTS[1:]
    path = save_judge(CanvasJudge(objects=objects, widths=(8, 8, 8, 16)), tmp_path / "dog.safetensors")
    with pytest.raises(ValueError, match=r"different canvas.*'dog'.*expected.*'circle'"):
        load_judge(path, expected_objects=CANVAS_OBJECTS, expected_styles=CANVAS_STYLES)
    assert load_judge(path, expected_styles=CANVAS_STYLES).objects == objects
