"""evaluate_images end to end with a tiny judge, and the report writers."""

import json

import pytest
import torch

from unlearn.data.canvas import CANVAS_OBJECTS, CANVAS_STYLES
from unlearn.data.canvas_datamodule import CanvasDataset
from unlearn.eval.evaluate import evaluate_images, write_evaluation
from unlearn.eval.judge import CanvasJudge


@pytest.fixture(scope="module")
def batch():
    ds = CanvasDataset(96, seed=5, caption_mode="joint")
    items = [ds[i] for i in range(len(ds))]
    return (torch.stack([it["jpg"] for it in items]), [it["object"] for it in items], [it["style"] for it in items])


def test_evaluate_and_write(batch, tmp_path):
    torch.manual_seed(0)
    judge = CanvasJudge(widths=(8, 8, 8, 16)).eval()
    images, objs, styles = batch
    m = evaluate_images(judge, images, objs, styles, erased=["striped"], reference_count=64)
    for key in ("UA", "IRA", "CRA", "FD", "object_acc", "style_acc", "joint_acc"):
        assert key in m
    assert m["FD"] >= 0 and m["n_reference"] == 64
    same = evaluate_images(judge, images, objs, styles, erased=["striped"], reference_images=images)
    assert same["FD"] == pytest.approx(0.0, abs=1e-4)
    paths = write_evaluation(tmp_path, m, images, objs, styles, CANVAS_OBJECTS, CANVAS_STYLES)
    data = json.loads(paths["json"].read_text())
    assert data["erased"] == ["striped"] and len(data["per_concept"]) == 16
    assert "| UA |" in paths["markdown"].read_text()
    assert paths["grid"].stat().st_size > 1000


def test_evaluate_errors(batch):
    judge = CanvasJudge(widths=(8, 8, 8, 16)).eval()
    images, objs, styles = batch
    with pytest.raises(ValueError, match="unknown concept 'zebra'.*known objects"):
        evaluate_images(judge, images, objs, styles, erased=["zebra"])
    with pytest.raises(ValueError, match="different canvas"):
        evaluate_images(judge, images, objs, styles, objects=("dog",) + CANVAS_OBJECTS[1:])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        evaluate_images(judge, images * 255, objs, styles)
    with pytest.raises(ValueError, match="object labels"):
        evaluate_images(judge, images, objs[:5], styles)
    names = [CANVAS_OBJECTS[o] for o in objs]
    m = evaluate_images(judge, images[:8], names[:8], styles[:8], reference_images=images[8:40])
    assert m["n_images"] == 8
