"""scripts/bench/toy_sweep.py: per-concept erasures averaged; resumes from saved metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.scripts import load_script


def _per_concept(acc):
    return [{"concept": c, "kind": k, "n": 32, "accuracy": a} for (k, c), a in acc.items()]


def _write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _fake_erasures(sweep, monkeypatch, tmp_path) -> dict:
    """Replace training and evaluation in ``sweep``: every erasure scores UA 50 / IRA 90 / CRA 80;
    returns the dict each concept's main.py overrides are recorded in."""
    extras = {}

    def fake_erase(args, concept, out_dir, extra):
        extras[concept] = extra
        return tmp_path / concept, 1.0

    def fake_evaluate(args, out, model_args, concept):
        if concept is not None:
            _write(out, {"UA": 50.0, "IRA": 90.0, "CRA": 80.0, "FD": 9.0})
        return json.loads(out.read_text())

    monkeypatch.setattr(sweep, "erase", fake_erase)
    monkeypatch.setattr(sweep, "evaluate", fake_evaluate)
    monkeypatch.setattr(sweep, "artifact_args", lambda run_dir: ["--masks", str(run_dir)])
    return extras


def test_sweep_averages_saved_runs_without_training_again(tmp_path):
    sweep = load_script("bench/toy_sweep.py")
    base_acc = {
        ("object", "circle"): 100.0,
        ("object", "star"): 80.0,
        ("object", "moon"): 90.0,
        ("style", "solid"): 60.0,
        ("style", "outlined"): 40.0,
    }
    _write(tmp_path / "eval" / "base" / "metrics.json", {"per_concept": _per_concept(base_acc), "FD": 24.0})
    for concept, (ua, ira, cra, fd, secs) in {
        "circle": (10.0, 90.0, 50.0, 30.0, 40),
        "star": (70.0, 80.0, 40.0, 50.0, 60),
    }.items():
        _write(tmp_path / "eval" / concept / "metrics.json", {"UA": ua, "IRA": ira, "CRA": cra, "FD": fd})
        (tmp_path / "eval" / concept / "train_s.txt").write_text(f"{secs}\n")
    # --python false: any training or evaluation call would fail the test
    result = sweep.main(
        [
            "--method",
            "configs/methods/esd_x.yaml",
            "--set",
            "train_method=noxattn",
            "--kind",
            "object",
            "--concepts",
            "circle",
            "star",
            "--out",
            str(tmp_path),
            "--python",
            "false",
        ]
    )
    assert result["mean"] == pytest.approx({"UA": 40.0, "IRA": 85.0, "CRA": 45.0, "FD": 40.0, "train_s": 50.0})
    # the base against circle: UA 0, IRA mean(80, 90), CRA mean(60, 40); against star: UA 20, IRA 95
    assert result["concepts"][0]["base"] == pytest.approx({"UA": 0.0, "IRA": 85.0, "CRA": 50.0})
    assert result["base_mean"] == pytest.approx({"UA": 10.0, "IRA": 90.0, "CRA": 50.0})
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["mean"]["UA"] == pytest.approx(40.0)
    table = (tmp_path / "sweep.md").read_text()
    assert "| **mean** | **40.0** | **85.0** | **45.0** | 40.0 | 50.0 | 10.0 / 90.0 / 50.0 |" in table
    assert result["drawn"] == ["circle", "star"] and "drawn" not in table  # both drawn: one mean


def test_sweep_adds_a_mean_over_the_concepts_the_base_model_draws(tmp_path):
    sweep = load_script("bench/toy_sweep.py")
    # the base model draws solid (90%) and noisy (50%, the threshold) but not striped (10%)
    base_acc = {
        ("style", "solid"): 90.0,
        ("style", "striped"): 10.0,
        ("style", "noisy"): 50.0,
        ("object", "circle"): 100.0,
    }
    _write(tmp_path / "eval" / "base" / "metrics.json", {"per_concept": _per_concept(base_acc), "FD": 24.0})
    for concept, ua in {"solid": 60.0, "striped": 100.0, "noisy": 80.0}.items():
        _write(tmp_path / "eval" / concept / "metrics.json", {"UA": ua, "IRA": 50.0, "CRA": 90.0, "FD": 30.0})
    result = sweep.main(
        [
            "--method",
            "configs/methods/esd_x.yaml",
            "--kind",
            "style",
            "--concepts",
            "solid",
            "striped",
            "noisy",
            "--out",
            str(tmp_path),
            "--python",
            "false",
        ]
    )
    assert result["drawn"] == ["solid", "noisy"]
    assert result["mean"]["UA"] == pytest.approx(80.0)
    assert result["mean_drawn"]["UA"] == pytest.approx(70.0)
    # the base against solid: UA 10, IRA mean(10, 50); against noisy: UA 50, IRA mean(90, 10)
    assert result["base_mean_drawn"] == pytest.approx({"UA": 30.0, "IRA": 40.0, "CRA": 100.0})
    table = (tmp_path / "sweep.md").read_text()
    assert "| **mean, drawn (2)** | **70.0** | **50.0** | **90.0** | 30.0 | n/a | 30.0 / 40.0 / 100.0 |" in table
    assert "solid, noisy" in table


def test_sweep_rejects_concepts_of_the_other_kind_and_missing_outputs(tmp_path):
    sweep = load_script("bench/toy_sweep.py")
    with pytest.raises(ValueError, match=r"\['striped'\] are not objects"):
        sweep.main(
            [
                "--method",
                "configs/methods/esd_x.yaml",
                "--set",
                "train_method=noxattn",
                "--kind",
                "object",
                "--concepts",
                "striped",
                "--out",
                str(tmp_path),
            ]
        )
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        sweep.main(["--method", "configs/methods/no_such.yaml", "--kind", "object", "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="erased.safetensors or masks.safetensors"):
        sweep.artifact_args(tmp_path)
    (tmp_path / "masks.safetensors").write_bytes(b"")
    assert sweep.artifact_args(tmp_path) == ["--masks", str(tmp_path / "masks.safetensors")]


def test_anchor_next_gives_each_concept_the_next_of_its_kind(tmp_path, monkeypatch):
    sweep = load_script("bench/toy_sweep.py")
    _write(
        tmp_path / "eval" / "base" / "metrics.json",
        {"per_concept": _per_concept({("object", "moon"): 100.0, ("object", "arrow"): 100.0}), "FD": 6.0},
    )
    extras = _fake_erasures(sweep, monkeypatch, tmp_path)
    result = sweep.main(
        [
            "--method",
            "configs/methods/minimalist.yaml",
            "--kind",
            "object",
            "--concepts",
            "moon",
            "arrow",
            "--anchor-next",
            "--out",
            str(tmp_path),
        ]
    )
    assert extras == {
        "moon": ["model.params.deconcept_anchor=arrow"],
        "arrow": ["model.params.deconcept_anchor=circle"],
    }  # the last wraps to the first
    assert result["anchor_next"] is True and "--anchor-next" in (tmp_path / "sweep.md").read_text()


def test_anchors_file_gives_each_concept_its_named_anchor(tmp_path, monkeypatch):
    sweep = load_script("bench/toy_sweep.py")
    _write(
        tmp_path / "out" / "eval" / "base" / "metrics.json",
        {"per_concept": _per_concept({("object", "heart"): 100.0, ("object", "moon"): 100.0}), "FD": 6.0},
    )
    anchors = tmp_path / "nearest.json"
    _write(anchors, {"anchors": {"heart": "square", "moon": "cross", "circle": "square"}})
    extras = _fake_erasures(sweep, monkeypatch, tmp_path)
    common = ["--method", "configs/methods/minimalist.yaml", "--kind", "object", "--out", str(tmp_path / "out")]
    result = sweep.main([*common, "--concepts", "heart", "moon", "--anchors", str(anchors)])
    assert extras == {
        "heart": ["model.params.deconcept_anchor=square"],
        "moon": ["model.params.deconcept_anchor=cross"],
    }
    assert [r["anchor"] for r in result["concepts"]] == ["square", "cross"]
    table = (tmp_path / "out" / "sweep.md").read_text()
    assert f"--anchors {anchors}" in table and "| heart → square | 50.0 |" in table

    with pytest.raises(ValueError, match="choose one anchor rule"):
        sweep.main([*common, "--anchors", str(anchors), "--anchor-next"])
    with pytest.raises(FileNotFoundError, match="--anchors: no such file: .*none.json"):
        sweep.main([*common, "--anchors", str(tmp_path / "none.json")])
    with pytest.raises(ValueError, match=r"no anchor for \['star'\]"):
        sweep.main([*common, "--concepts", "star", "--anchors", str(anchors)])
    _write(anchors, {"anchors": {"heart": "heart", "moon": "striped"}})
    with pytest.raises(ValueError, match="'heart': 'heart', 'moon': 'striped'.* are not other objects"):
        sweep.main([*common, "--concepts", "heart", "moon", "--anchors", str(anchors)])
    anchors.write_text("not json")
    with pytest.raises(ValueError, match="expected the JSON of scripts/bench/nearest_anchor.py"):
        sweep.main([*common, "--concepts", "heart", "--anchors", str(anchors)])


def test_training_seed_and_heldout_images_reach_main_and_evaluate(tmp_path, monkeypatch):
    sweep = load_script("bench/toy_sweep.py")
    commands = []

    def fake_run(cmd, log):
        commands.append(cmd)
        if "main.py" in cmd:
            run_dir = Path(cmd[cmd.index("--logdir") + 1]) / "2026-01-01T00-00-00_sweep_star"
            run_dir.mkdir(parents=True)
            (run_dir / "masks.safetensors").write_bytes(b"")
            return
        seed = int(cmd[cmd.index("--seed") + 1]) if "--seed" in cmd else 0
        star, ua = (100.0 - seed / 100, seed / 100) if "--masks" in cmd else (100.0, 0.0)
        _write(
            Path(cmd[cmd.index("--out") + 1]),
            {
                "UA": ua,
                "IRA": 100.0,
                "CRA": 92.0,
                "FD": 9.0 + seed / 1000,
                "per_concept": _per_concept(
                    {("object", "star"): star, ("object", "moon"): 100.0, ("style", "solid"): 90.0}
                ),
            },
        )

    monkeypatch.setattr(sweep, "_run", fake_run)
    common = ["--method", "configs/methods/minimalist.yaml", "--kind", "object", "--concepts", "star"]
    result = sweep.main([*common, "--train-seed", "7", "--heldout-seed", "1000", "--out", str(tmp_path)])
    base, heldout_base, train, erased, heldout_erased = commands
    assert "main.py" in train and train[train.index("--seed") + 1] == "7"
    assert "--seed" not in base and "--seed" not in erased  # the benchmark's own images
    for cmd in (heldout_base, heldout_erased):
        assert cmd[cmd.index("--seed") + 1] == "1000" and "/eval_seed1000/" in cmd[cmd.index("--out") + 1]
    assert heldout_erased[heldout_erased.index("--masks") + 1].endswith("sweep_star/masks.safetensors")
    row = result["concepts"][0]
    assert (row["UA"], row["heldout"]["UA"], row["heldout"]["FD"]) == (0.0, 10.0, 10.0)
    assert result["heldout_mean"]["UA"] == 10.0 and result["heldout_base_FD"] == 10.0
    table = (tmp_path / "sweep.md").read_text()
    assert "4 images per prompt, training seed 7." in table
    assert "from seed 1000 + k" in table and "| star | 10.0 | 100.0 | 92.0 | 10.0 | 0.0 / 100.0 / 90.0 |" in table

    # held-out images added to a finished sweep: evaluations only, nothing retrained
    commands.clear()
    result = sweep.main([*common, "--heldout-seed", "2000", "--out", str(tmp_path)])
    assert [cmd[cmd.index("--seed") + 1] for cmd in commands] == ["2000", "2000"]
    assert result["concepts"][0]["heldout"]["UA"] == 20.0
    for run in (tmp_path / "runs").iterdir():  # a finished sweep whose runs were deleted
        shutil.rmtree(run)
    with pytest.raises(FileNotFoundError, match=r"no run directory .*runs/\*_sweep_star"):
        sweep.main([*common, "--heldout-seed", "3000", "--out", str(tmp_path)])

    # without the options neither script gets a --seed: their own defaults are the benchmark's
    commands.clear()
    sweep.main([*common, "--out", str(tmp_path / "defaults")])
    assert len(commands) == 3 and all("--seed" not in cmd for cmd in commands)
    assert "4 images per prompt." in (tmp_path / "defaults" / "sweep.md").read_text()
