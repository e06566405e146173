"""Which concepts the toy methods table erases: best drawn by the base model, no judge sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
JUDGE = ROOT / "checkpoints" / "toy" / "judge.safetensors"


def _rows(kind, accuracies):
    return [{"concept": c, "kind": kind, "accuracy": a} for c, a in accuracies.items()]


def test_pick_skips_excluded_concepts_and_keeps_the_first_of_ties():
    pick = load_script("bench/pick_concepts.py").pick
    rows = _rows("style", {"solid": 100.0, "striped": 10.0, "gradient": 100.0, "outlined": 100.0, "noisy": 100.0})
    rows += _rows("object", {"circle": 90.0, "square": 95.0})
    assert pick(rows, "style", {"solid", "gradient"}) == "outlined"
    assert pick(rows, "style", set()) == "solid"
    assert pick(rows, "object", set()) == "square"
    with pytest.raises(ValueError, match="no object is left"):
        pick(rows, "object", {"circle", "square"})


def test_blurred_images_read_as_gradient_to_the_shipped_judge():
    from unlearn.eval.judge import load_judge
    from unlearn.eval.judge_sinks import judge_sinks

    sinks = judge_sinks(load_judge(JUDGE), count=64)
    assert sinks["style"]["sinks"] == ["gradient"]
    assert sinks["style"]["shares"]["gradient"] > 80.0
    assert sinks["object"]["sinks"] == []  # no object takes most blurred images
    assert sum(sinks["object"]["shares"].values()) == pytest.approx(100.0)


def test_pick_concepts_script_writes_its_reasons(tmp_path):
    base = tmp_path / "metrics.json"
    per_concept = _rows("style", {"solid": 100.0, "gradient": 100.0, "outlined": 100.0}) + _rows(
        "object", {"circle": 100.0}
    )
    base.write_text(json.dumps({"per_concept": per_concept}))
    out = tmp_path / "concepts.json"
    choice = load_script("bench/pick_concepts.py").main([str(base), "--judge", str(JUDGE), "--out", str(out)])
    assert (choice["style"], choice["object"]) == ("outlined", "circle")
    saved = json.loads(out.read_text())
    assert saved["judge_sinks"]["style"]["sinks"] == ["gradient"]
    assert saved["base_accuracy"]["outlined"] == 100.0
