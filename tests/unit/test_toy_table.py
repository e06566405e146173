"""scripts/bench/toy_table.py copies the evaluation figures into one table without changing them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.scripts import load_script


def _table():
    return load_script("bench/toy_table.py")


def _metrics(out: Path, name: str, **values):
    path = out / "eval" / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"object_acc": 80.0, "style_acc": 90.0, "joint_acc": 72.0, **values}))


def test_table_rows_figures_and_teacher_ratios(tmp_path):
    per_concept = [
        {"concept": c, "kind": "style", "n": 4, "accuracy": a}
        for c, a in (("striped", 95.0), ("solid", 90.0), ("dotted", 92.0))
    ]
    per_concept += [
        {"concept": c, "kind": "object", "n": 6, "accuracy": a} for c, a in (("circle", 80.0), ("star", 84.0))
    ]
    _metrics(tmp_path, "base", UA=None, IRA=None, CRA=None, FD=10.0, per_concept=per_concept)
    _metrics(tmp_path, "esd_x", UA=95.5, IRA=81.25, CRA=88.0, FD=12.0)
    _metrics(tmp_path, "esd_x_lr1e-3", UA=99.0, IRA=60.0, CRA=97.0, FD=14.0)
    _metrics(tmp_path, "esd_x_lr2e-4", UA=97.0, IRA=70.0, CRA=98.0, FD=13.0)
    _metrics(tmp_path, "esd_x_lr1e-3_it1000", UA=100.0, IRA=82.5, CRA=98.75, FD=16.0)
    _metrics(tmp_path, "esd_x_it1000", UA=50.0, IRA=90.0, CRA=99.0, FD=11.0)
    _metrics(tmp_path, "masks_style", UA=70.0, IRA=85.0, CRA=90.0, FD=11.0)
    _metrics(tmp_path, "dmd2_4step", UA=93.0, IRA=70.0, CRA=60.0, FD=15.0)
    _metrics(tmp_path, "dmd2_4step_lr2e-4", UA=96.0, IRA=70.0, CRA=60.0, FD=26.0)
    _metrics(tmp_path, "dmd2_4step_lr1e-3_it1000", UA=97.0, IRA=70.0, CRA=60.0, FD=20.0)
    run = tmp_path / "runs" / "m"
    run.mkdir(parents=True)
    save_file({"x": torch.ones(1)}, str(run / "masks.safetensors"), metadata={"off_share": "0.0425"})
    (tmp_path / "masks_style.run").write_text(f"{run}\n")
    (run / "resources.json").write_text(json.dumps({"peak_rss_mb": 812.4, "peak_cuda_mb": None}))
    cuda_run = tmp_path / "runs" / "e"
    cuda_run.mkdir()
    (cuda_run / "resources.json").write_text(json.dumps({"peak_rss_mb": 3000.0, "peak_cuda_mb": 1500.6}))
    (tmp_path / "esd_x.run").write_text(f"{cuda_run}\n")
    (tmp_path / "times.txt").write_text("esd_x 61\nmasks_style 240\n")

    _table().main([str(tmp_path), "--style", "striped", "--object", "circle", "--images", "4"])
    result = json.loads((tmp_path / "toy_methods.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    # Missing runs are left out; the settings follow their method, fewest iterations then smallest lr first.
    assert list(rows) == [
        "base",
        "esd_x",
        "esd_x_lr2e-4",
        "esd_x_lr1e-3",
        "esd_x_it1000",
        "esd_x_lr1e-3_it1000",
        "masks_style",
        "dmd2_4step",
        "dmd2_4step_lr2e-4",
        "dmd2_4step_lr1e-3_it1000",
    ]
    assert rows["esd_x"]["UA"] == 95.5 and rows["esd_x"]["concept"] == "striped" and rows["esd_x"]["train_s"] == 61
    assert rows["masks_style"]["off_pct"] == pytest.approx(4.25)
    # peak memory: the CUDA peak where the run had one, else the resident peak; none without resources.json
    assert (rows["esd_x"]["peak_mb"], rows["masks_style"]["peak_mb"], rows["esd_x_lr2e-4"]["peak_mb"]) == (
        1500.6,
        812.4,
        None,
    )
    # the base against each erased concept, from its per-concept accuracies
    assert result["before"]["style"] == pytest.approx({"UA": 5.0, "IRA": 91.0, "CRA": 82.0})
    assert result["before"]["object"] == pytest.approx({"UA": 20.0, "IRA": 84.0, "CRA": 92.333333})
    md = (tmp_path / "toy_methods.md").read_text()
    assert "| ESD-x (xattn), lr 1e-3 | striped | 99.0 | 60.0 |" in md
    assert "| ESD-x (xattn), lr 1e-3, 1000 it | striped | 100.0 | 82.5 |" in md
    assert "| ESD-x (xattn), lr 5e-5, 1000 it | striped | 50.0 | 90.0 |" in md
    assert (
        "| ESD-x (xattn), lr 5e-5 | striped | 95.5 | 81.2 | 88.0 | 12.0 | 80.0 | 90.0 | 72.0 | 61 | 1501 "
        "| ≥90/≥80/≥90 |"
    ) in md
    assert "| minimalist masks (4.2% off) | striped |" in md
    # Each student is compared with the ESD-x run of its own setting.
    assert "| DMD2 4-step student of ESD-x, lr 5e-5 | ESD-x (xattn), lr 5e-5 | 1.25 | -2.5 |" in md  # 15/12, 93-95.5
    assert "| DMD2 4-step student of ESD-x, lr 2e-4 | ESD-x (xattn), lr 2e-4 | 2.00 | -1.0 |" in md  # 26/13, 96-97
    assert (
        "| DMD2 4-step student of ESD-x, lr 1e-3, 1000 it | ESD-x (xattn), lr 1e-3, 1000 it | 1.25 | -3.0 |" in md
    )  # 20/16, 97-100


def test_run_suffixes_name_the_esd_setting():
    table = _table()
    assert table.esd_setting("") == ("5e-5", 200)
    assert table.esd_setting("_lr1e-3_it1000") == ("1e-3", 1000)
    assert table.esd_setting("_it500") == ("5e-5", 500)
    assert table._teacher_of("dmd2_1step_lr1e-3_it1000") == "esd_x_lr1e-3_it1000"
    assert table._teacher_of("dmd2_4step") == "esd_x"
    with pytest.raises(ValueError, match="unexpected part 'bogus'"):
        table.esd_setting("_bogus")


def test_table_without_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no metrics.json"):
        _table().main([str(tmp_path), "--style", "striped", "--object", "circle"])


def test_attack_results_join_their_rows_with_sample_sizes_and_intervals(tmp_path):
    _metrics(tmp_path, "esd_x_lr1e-3_it1000", UA=100.0, IRA=82.5, CRA=98.75, FD=16.0)
    _metrics(tmp_path, "masks_style", UA=70.0, IRA=85.0, CRA=90.0, FD=11.0)
    result = {
        "attack": "unlearndiffatk", "seeds": [1000, 1001, 1002, 1003], "attack_steps": 960, "attack_seconds": 123.4,
        "before": {"asr": 3.125, "k": 1, "n": 32, "ci95": [0.55, 15.74]},
        "after": {"asr": 25.0, "k": 8, "n": 32, "ci95": [13.25, 42.11]},
        "prompts": [{}] * 8,
    }  # fmt: skip
    path = tmp_path / "attacks" / "esd_x_lr1e-3_it1000" / "unlearndiffatk" / "attack.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    _table().main([str(tmp_path), "--style", "striped", "--object", "circle"])
    rows = {r["name"]: r for r in json.loads((tmp_path / "toy_methods.json").read_text())["rows"]}
    attack = rows["esd_x_lr1e-3_it1000"]["attacks"]["unlearndiffatk"]
    assert attack["after"]["k"] == 8 and attack["steps"] == 960 and attack["prompts"] == 8
    assert "attacks" not in rows["masks_style"]
    md = (tmp_path / "toy_methods.md").read_text()
    assert "held-out seeds 1000–1003" in md
    assert (
        "| ESD-x (xattn), lr 1e-3, 1000 it | striped | unlearndiffatk | 8 | 960 | 123 | "
        "3.1 (n 32, 95% CI 0.6–15.7) | 25.0 (n 32, 95% CI 13.2–42.1) |"
    ) in md


def test_baseline_rows_follow_the_masks_with_their_settings(tmp_path):
    _metrics(tmp_path, "esd_x", UA=95.5, IRA=81.25, CRA=88.0, FD=12.0)
    _metrics(tmp_path, "uce_style", UA=90.0, IRA=60.0, CRA=50.0, FD=20.0)
    _metrics(tmp_path, "uce_object", UA=80.0, IRA=40.0, CRA=35.0, FD=21.0)
    _metrics(tmp_path, "ca_style", UA=60.5, IRA=96.0, CRA=92.75, FD=9.0)
    _metrics(tmp_path, "ca_style_lr1e-3_it400", UA=88.0, IRA=90.0, CRA=91.0, FD=10.0)
    (tmp_path / "times.txt").write_text("uce_style 4\nca_style 300\n")
    _table().main([str(tmp_path), "--style", "striped", "--object", "circle", "--images", "4"])
    rows = {r["name"]: r for r in json.loads((tmp_path / "toy_methods.json").read_text())["rows"]}
    assert list(rows) == ["esd_x", "uce_style", "uce_object", "ca_style", "ca_style_lr1e-3_it400"]
    assert rows["uce_object"]["concept"] == "circle" and rows["uce_style"]["train_s"] == 4
    assert rows["ca_style"]["method"] == "Concept Ablation (K/V), lr 1.6e-5"  # configs/methods/ca.yaml's defaults
    assert rows["ca_style_lr1e-3_it400"]["method"] == "Concept Ablation (K/V), lr 1e-3, 400 it"
    md = (tmp_path / "toy_methods.md").read_text()
    assert "| UCE (closed-form K/V edit) | striped | 90.0 | 60.0 | 50.0 | 20.0 | 80.0 | 90.0 | 72.0 | 4 |  |" in md
    assert "| Concept Ablation (K/V), lr 1.6e-5 | striped | 60.5 | 96.0 | 92.8 |" in md


def _run_with(out: Path, name: str, export: str, metadata: dict[str, str]) -> None:
    run = out / "runs" / name
    run.mkdir(parents=True)
    save_file({"x": torch.ones(1)}, str(run / export), metadata=metadata)
    (out / f"{name}.run").write_text(f"{run}\n")


def test_rows_name_what_the_run_trained_from_its_export(tmp_path):
    """ESD_X_ARGS / MASK_ARGS change what a row trains; its label says so, read from the export."""
    for name in ("esd_x_lr1e-3_it1000", "esd_u_lr1e-3_it1000", "esd_x", "masks_style", "masks_object"):
        _metrics(tmp_path, name, UA=90.0, IRA=80.0, CRA=90.0, FD=10.0)
    _run_with(
        tmp_path, "esd_x_lr1e-3_it1000", "erased.safetensors",
        {"train_method": "xattn-pooled", "null_weight": "1.0", "preserve": "a solid pattern | a wavy pattern"},
    )  # fmt: skip
    _run_with(tmp_path, "esd_u_lr1e-3_it1000", "erased.safetensors", {"train_method": "noxattn", "null_weight": "0.0"})
    _run_with(tmp_path, "masks_style", "masks.safetensors", {"modules": json.dumps({"attn": 4, "ff": 2, "norm": 6})})
    _run_with(tmp_path, "masks_object", "masks.safetensors", {"modules": json.dumps({"linear": 90})})
    _table().main([str(tmp_path), "--style", "striped", "--object", "circle"])
    rows = {r["name"]: r["method"] for r in json.loads((tmp_path / "toy_methods.json").read_text())["rows"]}
    assert rows == {
        "esd_x": "ESD-x (xattn), lr 5e-5",  # no run folder: the row's default label
        "esd_x_lr1e-3_it1000": "ESD-x (xattn-pooled, null term 1, preserve), lr 1e-3, 1000 it",
        "esd_u_lr1e-3_it1000": "ESD-u (noxattn), lr 1e-3, 1000 it",
        "masks_style": "minimalist masks on attention heads, feed-forward, norm",
        "masks_object": "minimalist masks",
    }
