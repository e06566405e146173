"""scripts/evaluate.py end to end on a tiny untrained model (32 px so the judge can score it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")
JUDGE = str(ROOT / "checkpoints" / "toy" / "judge.safetensors")


@pytest.fixture(scope="module")
def evaluate():
    module = load_script("evaluate.py")
    return module


def run(evaluate, tmp_path, *extra):
    return evaluate.main(
        [
            "--config",
            SMOKE,
            "--set",
            "model.params.image_size=32",
            "--judge",
            JUDGE,
            "--images-per-prompt",
            "1",
            "--steps",
            "2",
            "--batch-size",
            "64",
            *extra,
        ]
    )


def test_writes_metrics_table_and_grid(evaluate, tmp_path):
    out = tmp_path / "eval" / "scores.json"
    metrics = run(evaluate, tmp_path, "--concept", "striped", "--out", str(out))
    saved = json.loads(out.read_text())
    for key in ("UA", "IRA", "CRA", "FD", "object_acc", "style_acc", "joint_acc", "per_concept"):
        assert key in saved
    for key in ("UA", "IRA", "CRA", "object_acc", "style_acc", "joint_acc"):
        assert 0.0 <= saved[key] <= 100.0
    assert saved["FD"] > 0 and saved["erased"] == ["striped"]
    assert len(saved["per_concept"]) == 16
    assert metrics["UA"] == pytest.approx(saved["UA"])
    assert (out.parent / "metrics.md").read_text().startswith("Erased: striped")
    grid = Image.open(out.parent / "grid.png")
    assert grid.size[0] > 8 * 32 and grid.size[1] > 8 * 32


def test_unknown_concept_lists_known_ones(evaluate, tmp_path):
    with pytest.raises(ValueError, match=r"unknown concept 'plaid'; known objects: \['circle'.*known styles"):
        run(evaluate, tmp_path, "--concept", "plaid", "--out", str(tmp_path / "m.json"))


def test_model_of_another_canvas_is_refused(evaluate, tmp_path):
    with pytest.raises(ValueError, match="different canvas"):
        run(
            evaluate,
            tmp_path,
            "--out",
            str(tmp_path / "m.json"),
            "--set",
            "model.params.image_size=32",
            "model.params.metadata={objects: [a], styles: [b]}",
        )


def test_missing_judge_is_named(evaluate, tmp_path):
    with pytest.raises(FileNotFoundError, match="nojudge.safetensors"):
        evaluate.main(
            ["--config", SMOKE, "--judge", str(tmp_path / "nojudge.safetensors"), "--out", str(tmp_path / "m.json")]
        )
