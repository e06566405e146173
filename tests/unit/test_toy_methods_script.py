"""scripts/bench/toy_methods.sh's parts: which programs it calls for which settings.

The script runs with PYTHON set to a stand-in that logs its arguments, writes whatever file
``--out`` names and makes the run folder a training would, so the control flow is checked
without training anything.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) mkdir -p "$(dirname "$2")"; echo '{"UA": 0}' > "$2" ;;
    --name) name=$2 ;;
    --logdir) mkdir -p "$2/2026-01-01T00-00-00_$name" ;;
  esac
  shift
done
"""


def run_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    stand_in = tmp_path / "python"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.touch()
    full_env = {**os.environ, "PYTHON": str(stand_in), "CALLS": str(calls), "STYLE": "outlined", "OBJECT": "circle"}
    proc = subprocess.run(
        ["bash", "scripts/bench/toy_methods.sh", str(tmp_path / "out")],
        cwd=ROOT,
        env={**full_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, calls.read_text().splitlines()


def programs(calls: list[str]) -> list[str]:
    return [call.split()[0] for call in calls]


def test_empty_settings_run_no_method_and_still_write_the_table(tmp_path):
    proc, calls = run_script(tmp_path, ESD_RUNS="", MASK_VARIANTS="", BASELINES="", DMD2_STEPS="0", ATTACKS="")
    assert proc.returncode == 0, proc.stderr
    assert programs(calls) == ["scripts/evaluate.py", "scripts/bench/toy_table.py"]
    assert "DMD2 teacher" not in proc.stdout


ESD_PART = {"MASK_VARIANTS": "", "BASELINES": "", "DMD2_STEPS": "0"}
MASKS_PART = {"ESD_RUNS": "", "MASK_VARIANTS": "paper", "BASELINES": "", "DMD2_STEPS": "0"}


@pytest.mark.parametrize(
    ("env", "names"),
    [(ESD_PART, ["esd_x_lr1e-3_outlined", "esd_u_lr1e-3_circle"]), (MASKS_PART, ["masks_outlined", "masks_circle"])],
)
def test_each_part_trains_only_its_own_runs(tmp_path, env, names):
    """The split the script's header gives for two cores: ESD on one, masks and baselines on the other."""
    proc, calls = run_script(tmp_path, **{"ESD_RUNS": "1e-3", "ATTACKS": "", **env})
    assert proc.returncode == 0, proc.stderr
    trained = [call.split("--name ")[1].split()[0] for call in calls if call.startswith("main.py")]
    assert trained == names
    assert programs(calls).count("scripts/evaluate.py") == 1 + len(names)


def test_esd_args_reach_every_esd_run_and_nothing_else(tmp_path):
    env = {**MASKS_PART, "ESD_RUNS": "1e-3", "ESD_ARGS": "null_weight=1 reuse=50", "ATTACKS": ""}
    proc, calls = run_script(tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    trainings = [call for call in calls if call.startswith("main.py")]
    assert [("null_weight=1 reuse=50" in call) for call in trainings] == [True, True, False, False]


def test_esd_x_args_reach_the_esd_x_run_only(tmp_path):
    env = {"ESD_RUNS": "1e-3", "ESD_X_ARGS": "train_method=xattn-pooled", "ATTACKS": "", **ESD_PART}
    proc, calls = run_script(tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    trainings = [call for call in calls if call.startswith("main.py")]
    assert ["train_method=xattn-pooled" in call for call in trainings] == [True, False]
    assert trainings[0].index("train_method=xattn ") < trainings[0].index("train_method=xattn-pooled")


def test_esd_u_args_reach_the_esd_u_run_only(tmp_path):
    env = {"ESD_RUNS": "1e-3", "ESD_U_ARGS": "null_weight=1", "ATTACKS": "", **ESD_PART}
    proc, calls = run_script(tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    trainings = [call for call in calls if call.startswith("main.py")]
    assert [("--name esd_u" in call, "null_weight=1" in call) for call in trainings] == [(False, False), (True, True)]


def test_mask_args_reach_every_mask_run_after_the_method_config(tmp_path):
    extra = "configs/methods/minimalist_transformer.yaml"
    proc, calls = run_script(tmp_path, **{**MASKS_PART, "MASK_ARGS": extra, "ATTACKS": ""})
    assert proc.returncode == 0, proc.stderr
    trainings = [call for call in calls if call.startswith("main.py")]
    assert len(trainings) == 2
    assert all(call.index("configs/methods/minimalist.yaml") < call.index(extra) for call in trainings)
