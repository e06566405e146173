"""scripts/bench/esd_speed.py: command lines, the summary, the acceptance rule and the files it writes."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def speed():
    spec = importlib.util.spec_from_file_location("esd_speed", ROOT / "scripts" / "bench" / "esd_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (reuse, seed) -> (train s, forward equivalents, UA, IRA, CRA, FD)
FAKE = {
    (1, 23): (200.0, 60_000, 100.0, 86.0, 100.0, 13.0),
    (1, 24): (210.0, 61_000, 100.0, 84.0, 98.0, 14.0),
    (1, 25): (190.0, 59_000, 96.9, 88.0, 100.0, 12.0),
    (10, 23): (40.0, 15_000, 100.0, 85.0, 99.0, 13.5),
    (10, 24): (42.0, 15_500, 96.9, 86.0, 100.0, 13.0),
    (10, 25): (38.0, 14_500, 100.0, 87.0, 99.0, 12.5),
    (25, 23): (25.0, 10_000, 90.6, 90.0, 100.0, 10.0),
    (25, 24): (26.0, 10_000, 100.0, 80.0, 97.0, 15.0),
    (25, 25): (24.0, 10_000, 100.0, 81.0, 99.0, 14.0),
}


def test_bench_compares_every_factor_with_the_reference_and_picks_the_largest_acceptable(speed, tmp_path, monkeypatch):
    commands = []

    def fake_run(cmd, log):
        commands.append(cmd)
        if "--worker" in cmd:
            reuse = int(
                next(a for a in cmd if a.startswith("model.params.trajectory_config.params.reuse=")).split("=")[1]
            )
            seed = int(cmd[cmd.index("--seed") + 1])
            s, fe, *_ = FAKE[(reuse, seed)]
            out = Path(cmd[cmd.index("--worker") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"train_s": s, "forward_equivalents": fe, "run_dir": str(tmp_path / "r")}))
        else:
            name = Path(cmd[cmd.index("--out") + 1]).parent.name  # reuse<r>_seed<s>
            reuse, seed = (int(x) for x in name.removeprefix("reuse").split("_seed"))
            ua, ira, cra, fd = FAKE[(reuse, seed)][2:]
            out = Path(cmd[cmd.index("--out") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"UA": ua, "IRA": ira, "CRA": cra, "FD": fd}))

    monkeypatch.setattr(speed, "_run", fake_run)
    result = speed.main(["--reuse", "10", "25", "--out", str(tmp_path / "out")])
    workers = [c for c in commands if "--worker" in c]
    assert len(workers) == 9 and len(commands) == 18  # 3 seeds x (reference + 2 factors), each evaluated
    first = workers[0]
    assert "concept=outlined" in first and "lr=1e-3" in first and "iterations=1000" in first
    assert "lightning.callbacks.toy_benchmark=null" in first and first[first.index("--seed") + 1] == "23"
    assert result["sources"]["1"]["IRA"] == {"mean": 86.0, "min": 84.0, "max": 88.0}
    # reuse 10: every UA >= 95, mean IRA 86 >= 84 and CRA 99.3 >= 98: acceptable
    assert result["sources"]["10"]["acceptable"] is True
    # reuse 25: a seed at UA 90.6 (and mean IRA 83.7 < 84): not acceptable, although faster
    assert result["sources"]["25"]["acceptable"] is False
    assert result["chosen_reuse"] == 10
    assert result["reference_s"] == pytest.approx(200.0) and result["reuse_s"] == pytest.approx(40.0)
    assert result["speedup"] == pytest.approx(5.0) and result["flops_ratio"] == pytest.approx(60_000 / 15_000)
    saved = json.loads((tmp_path / "out" / "esd_speed.json").read_text())
    assert saved["speedup"] == pytest.approx(5.0) and saved["reference"]["UA"]["min"] == pytest.approx(96.9)
    md = (tmp_path / "out" / "esd_speed.md").read_text()
    assert "| reuse 10 | 40 | 5.00× | 4.00× |" in md and "Chosen: reuse 10" in md
    # a second call trains and evaluates nothing again
    commands.clear()
    speed.main(["--reuse", "10", "25", "--out", str(tmp_path / "out")])
    assert commands == []


def test_bad_reuse_factor_is_refused(speed, tmp_path):
    with pytest.raises(ValueError, match=r"--reuse: factors above 1"):
        speed.main(["--reuse", "1", "--out", str(tmp_path)])


def test_worker_times_fit_and_counts_unet_work(speed, tmp_path):
    argv = ["--base", "configs/toy/smoke.yaml", "configs/methods/esd_x.yaml", "concept=striped", "iterations=3",
            "ddim_steps=4", "model.params.loss_fn_config=null", "model.params.trajectory_config.params.pool_size=2",
            "model.params.trajectory_config.params.reuse=2", "lightning.callbacks.toy_benchmark=null",
            "lightning.callbacks.image_logger=null",
            "-l", str(tmp_path / "runs"), "-n", "speed"]  # fmt: skip
    result = speed.timed_training(argv, tmp_path / "speed.json")
    assert result["iterations"] == 3 and result["train_s"] > 0
    counts = result["image_forwards"]
    # 3 iterations: the student once each (with grad); the frozen model for 3 teacher calls of 2 images
    # (null, concept) and one refill of 2 trajectories x 2 steps (at most 4 CFG steps of 2 x 2 images)
    assert counts["grad"] == 3 and 3 * 2 <= counts["no_grad"] <= 3 * 2 + 4 * 2 * 2
    assert result["forward_equivalents"] == counts["no_grad"] + 3 * counts["grad"]
    assert json.loads((tmp_path / "speed.json").read_text())["iterations"] == 3
    assert (Path(result["run_dir"]) / "erased.safetensors").is_file()
