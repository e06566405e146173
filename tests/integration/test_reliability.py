"""Issue 25: no code from files, validation before writing, truthful exit codes, non-finite stops, safe resumes.

Each trial asserts the exit code, the one ``error:`` line and what is (not) left on disk.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported before capsys: Lightning binds its log handler to stderr on import)
import pytest
import torch

from tests.scripts import load_script
from unlearn import cli
from unlearn.scripting import run_script

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")
ESD = [
    str(ROOT / "configs" / "models" / "toy_canvas.yaml"),
    str(ROOT / "configs" / "methods" / "esd_x.yaml"),
    "concept=outlined",
]
pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = ["lightning.callbacks.image_logger=null", "lightning.trainer.enable_model_summary=false"]


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def snapshot(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(autouse=True)
def no_stale_log_handlers():
    """Drop root log handlers an earlier test left on its closed, captured stderr: their "Logging
    error" tracebacks would be mistaken for ours."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)


def script_exit_code(name: str, argv: list[str]) -> int:
    """The exit code of ``scripts/<name> argv`` run as from the command line (`run_script`), in this process."""
    module = load_script(name)
    root = logging.getLogger()
    handlers = root.handlers[:]
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_script(lambda: module.main(argv))
    finally:
        root.handlers[:] = handlers  # run_script's handler writes to this test's captured stderr
    return exit_info.value.code


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A smoke run of 2 steps (checkpoints at step 2: epoch=...-step=2.ckpt and last.ckpt), seed 5."""
    logdir = tmp_path_factory.mktemp("logs")
    return cli.main(
        ["--base", SMOKE, "-l", str(logdir), "-n", "smoke", "-s", "5", "lightning.trainer.max_steps=2", *QUIET]
    )


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    return run


# ----------------------------------------------------------------------------- no code from files
class _MakesMarker:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_malicious_checkpoint_runs_no_code_at_any_entry_point(run_copy: Path, tmp_path: Path, capsys):
    marker = tmp_path / "marker"
    last = run_copy / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 2, "epoch": 0, "payload": _MakesMarker(marker)}, last)
    before = snapshot(run_copy)
    out = tmp_path / "out"
    scripts = {
        "sample.py": ["--run", str(run_copy), "--prompt", "a circle", "--out", str(out / "samples")],
        "evaluate.py": ["--ckpt", str(last), "--out", str(out / "metrics.json")],
        "export_model.py": ["--run", str(run_copy), "--out", str(out / "model.safetensors")],
    }
    for name, argv in scripts.items():
        assert script_exit_code(name, argv) == 2, name
        assert f"refusing to load {last}: it needs pickle to build posix.mkdir" in error_line(capsys), name
    logdir = tmp_path / "logs"
    assert cli.run(["--base", SMOKE, "-l", str(logdir), f"model.params.ckpt_path={last}"]) == 2
    assert error_line(capsys).startswith(f"error: model.params.ckpt_path: refusing to load {last}")
    assert cli.run(["--resume", str(run_copy)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: --resume: refusing to load {last}") and "safetensors" in line
    assert not marker.exists()
    assert not logdir.exists() and not out.exists()
    assert snapshot(run_copy) == before


def test_project_checkpoints_load_weights_only(trained_run: Path):
    for path in (trained_run / "checkpoints").glob("*.ckpt"):
        assert ckpt(path)["global_step"] == 2


# ------------------------------------------------------------------------ validation before writing
BAD_VALUES = [
    (
        ESD + ["iterations=abc"],
        "lightning.trainer.max_steps (from ${iterations}): expected an integer >= -1, got 'abc'",
    ),
    (ESD + ["iterations=-5"], "lightning.trainer.max_steps (from ${iterations}): expected an integer >= -1, got -5"),
    (ESD + ["lr=-1"], "model.params.base_learning_rate (from ${lr}): expected a number >= 0, got -1"),
    (ESD + ["lr=abc"], "model.params.base_learning_rate (from ${lr}): expected a number >= 0, got 'abc'"),
    (
        [SMOKE, "model.params.base_learning_rate=abc"],
        "model.params.base_learning_rate: expected a number >= 0, got 'abc'",
    ),
    ([SMOKE, "data.params.batch_size=abc"], "data.params.batch_size: expected an integer >= 1, got 'abc'"),
    (
        [SMOKE, "lightning.modelcheckpoint.params.every_n_train_step=5"],
        "lightning.modelcheckpoint.params.every_n_train_step: ModelCheckpoint has no argument 'every_n_train_step'; "
        "did you mean lightning.modelcheckpoint.params.every_n_train_steps?",
    ),
    ([SMOKE, "lightning.trainer.accelerator=tpu"], "lightning.trainer.accelerator: 'tpu' is not available"),
    ([SMOKE, "lightning.trainer.max_epochs=1.5"], "lightning.trainer.max_epochs: expected an integer >= -1 or null"),
    (
        [SMOKE, "lightning.callbacks.non_finite.params.policy=halt"],
        "lightning.callbacks.non_finite.params.policy: expected one of ('stop', 'skip'), got 'halt'",
    ),
]


@pytest.mark.parametrize("argv, message", BAD_VALUES, ids=[a[-1] for a, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_and_writes_nothing(argv: list[str], message: str, tmp_path: Path, capsys):
    logdir = tmp_path / "logs"
    assert cli.run(["--base", *argv, "-l", str(logdir)]) == 2
    assert error_line(capsys).startswith(f"error: {message}")
    assert not logdir.exists()


def test_a_failed_resume_leaves_the_run_as_it_was(run_copy: Path, capsys):
    before = snapshot(run_copy)
    assert cli.run(["--resume", str(run_copy), "model.params.base_learning_rate=abc"]) == 2
    assert "model.params.base_learning_rate" in error_line(capsys)
    assert snapshot(run_copy) == before
    assert cli.run(["--resume", str(run_copy), "lightning.trainer.max_steps=3", *QUIET]) == 0
    assert ckpt(run_copy / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_a_failure_at_fit_before_any_step_removes_the_new_run(tmp_path: Path, capsys, monkeypatch):
    from unlearn.data.canvas_datamodule import CanvasDataModule

    def broken(self, *args, **kwargs):
        raise ValueError("data.params.train_length: no images (a bad value found only at fit)")

    monkeypatch.setattr(CanvasDataModule, "train_dataloader", broken)
    logdir = tmp_path / "logs"
    assert cli.run(["--base", SMOKE, "-l", str(logdir), *QUIET]) == 2
    assert error_line(capsys) == "error: data.params.train_length: no images (a bad value found only at fit)"
    assert list(logdir.iterdir()) == []


# --------------------------------------------------------------------------------- resume that helps
def test_a_truncated_last_ckpt_names_the_newest_whole_checkpoint(run_copy: Path, capsys):
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (run_copy / "checkpoints" / "last.ckpt").touch()  # the newest file
    before = snapshot(run_copy)
    whole = next((run_copy / "checkpoints").glob("epoch=*.ckpt"))
    assert cli.run(["--resume", str(run_copy)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: --resume: cannot read {last} (truncated or corrupt?)")
    assert line.endswith(f"the newest complete checkpoint beside it is {whole}: --resume {whole}")
    assert snapshot(run_copy) == before
    assert cli.run(["--resume", str(whole), "lightning.trainer.max_steps=3", *QUIET]) == 0
    assert ckpt(last)["global_step"] == 3


def test_the_seed_is_saved_with_the_run_and_reused(run_copy: Path):
    import json

    assert json.loads((run_copy / "run.json").read_text())["seed"] == 5
    cli.prepare(["--resume", str(run_copy), *QUIET])
    assert torch.initial_seed() == 5
    cli.prepare(["--resume", str(run_copy), "-s", "9", *QUIET])
    assert torch.initial_seed() == 9
    assert json.loads((run_copy / "run.json").read_text())["seed"] == 5


# --------------------------------------------------------------------------------- unique run dirs
def test_runs_with_one_name_in_one_second_get_their_own_dirs(tmp_path: Path, monkeypatch):
    import datetime

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(cli.datetime, "datetime", Frozen)
    logdir = tmp_path / "logs"
    first = cli.main(["--base", SMOKE, "-l", str(logdir), "-n", "same", "--no-train", *QUIET])
    claim = cli.claim_run_dir

    def raced(logdir_, now, name):  # another process takes the planned name between plan and claim
        (Path(logdir_) / f"{now}_{name}-1").mkdir()
        return claim(logdir_, now, name)

    monkeypatch.setattr(cli, "claim_run_dir", raced)
    trainer, _, _, paths, _, _ = cli.prepare(["--base", SMOKE, "-l", str(logdir), "-n", "same", *QUIET])
    assert first.name == "2030-01-02T03-04-05_same"
    assert paths.run_dir.name == "2030-01-02T03-04-05_same-2"
    assert Path(trainer.checkpoint_callback.dirpath) == paths.run_dir / "checkpoints"
    assert list((paths.run_dir / "configs").glob("*-project.yaml"))


# ------------------------------------------------------------------------------ outputs checked first
def test_unwritable_outputs_are_refused_before_anything_is_built(tmp_path: Path, capsys, monkeypatch):
    import unlearn.config

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the output was checked")

    monkeypatch.setattr(unlearn.config, "instantiate_from_config", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli.run(["--base", SMOKE, "-l", str(blocker / "logs")]) == 2
    assert error_line(capsys).startswith(f"error: -l/--logdir: cannot write to {blocker / 'logs'}")
    missing_run = str(tmp_path / "no_run")
    scripts = {
        "sample.py": ["--run", missing_run, "--prompt", "x", "--out", str(blocker / "samples")],
        "evaluate.py": ["--run", missing_run, "--out", str(blocker / "metrics.json")],
        "export_model.py": ["--run", missing_run, "--out", str(blocker / "m.safetensors")],
        "evaluate_nudity.py": ["--images", missing_run, "--out", str(blocker / "nudity.json")],
    }
    for name, argv in scripts.items():
        assert script_exit_code(name, argv) == 2, name
        assert error_line(capsys).startswith(f"error: --out: cannot write to {blocker}"), name


# --------------------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize("kind, code, name", [("sigterm", 143, "SIGTERM"), ("sigint", 130, "Ctrl-C (SIGINT)")])
def test_a_signal_saves_last_ckpt_and_exits_non_zero(kind: str, code: int, name: str, tmp_path: Path, capsys):
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C while it shuts down
    # Ctrl-C must raise here whatever an earlier test left installed (an ignored SIGINT would let
    # the run finish and exit 0).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    boom = (
        f"lightning.callbacks.boom={{target: tests.integration.fault_callbacks.RaiseAtStep, "
        f"params: {{step: 1, kind: {kind}}}}}"
    )
    try:
        rc = cli.run(
            [
                "--base",
                SMOKE,
                "-l",
                str(tmp_path),
                "lightning.trainer.max_steps=20",
                "lightning.modelcheckpoint.params.every_n_train_steps=100",
                boom,
                *QUIET,
            ]
        )
    finally:
        signal.signal(signal.SIGINT, handler)
    assert rc == code
    line = error_line(capsys)
    run = next(tmp_path.iterdir())
    step = ckpt(run / "checkpoints" / "last.ckpt")["global_step"]
    assert step in (1, 2)
    assert line.startswith(f"error: interrupted by {name} at step {step}: the run did not finish")
    assert line.endswith(f"resume with: python main.py --resume {run}")


# ---------------------------------------------------------------------------------- non-finite losses
def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path: Path, capsys):
    rc = cli.run(
        [
            "--base",
            SMOKE,
            "-l",
            str(tmp_path),
            "model.params.base_learning_rate=1e6",
            "lightning.trainer.max_steps=6",
            *QUIET,
        ]
    )
    assert rc == 3
    line = error_line(capsys)
    assert line.startswith("error: non-finite loss at step 1: loss = nan; stopped before the optimizer step")
    run = next(tmp_path.iterdir())
    saved = list((run / "checkpoints").glob("*.ckpt"))
    assert saved and f"saved {run / 'checkpoints' / 'last.ckpt'} at step 1" in line
    for path in saved:
        assert all(torch.isfinite(v).all() for v in ckpt(path)["state_dict"].values() if v.is_floating_point())


def test_the_skip_policy_is_set_by_override(tmp_path: Path, capsys):
    rc = cli.run(
        [
            "--base",
            SMOKE,
            "-l",
            str(tmp_path),
            "model.params.base_learning_rate=1e6",
            "lightning.trainer.max_steps=6",
            "lightning.callbacks.non_finite.params.policy=skip",
            "lightning.callbacks.non_finite.params.max_skips=2",
            *QUIET,
        ]
    )
    assert rc == 3
    assert "non-finite loss at step 3: loss = nan" in error_line(capsys)
    saved = next(tmp_path.iterdir()) / "configs"
    assert "policy: skip" in next(saved.glob("*-lightning.yaml")).read_text()


def test_esd_with_a_huge_learning_rate_stops_and_exports_nothing(tmp_path: Path, capsys):
    rc = cli.run(
        [
            "--base",
            *ESD,
            "-l",
            str(tmp_path),
            "lr=1e6",
            "iterations=5",
            "ddim_steps=4",
            "lightning.callbacks.toy_benchmark=null",
            *QUIET,
        ]
    )
    assert rc == 3
    assert re.match(r"error: non-finite (loss|gradient) at step \d+: ", error_line(capsys))
    run = next(tmp_path.iterdir())
    assert not (run / "erased.safetensors").exists()
    for path in (run / "checkpoints").glob("*.ckpt"):
        assert all(torch.isfinite(v).all() for v in ckpt(path)["state_dict"].values() if v.is_floating_point())


def test_the_non_finite_callback_is_a_default_that_a_config_can_switch_off(tmp_path: Path):
    from unlearn.callbacks import NonFiniteLoss

    def non_finite(*overrides: str) -> list[NonFiniteLoss]:
        trainer = cli.prepare(["--base", SMOKE, "-l", str(tmp_path), "--no-train", *overrides, *QUIET])[0]
        return [cb for cb in trainer.callbacks if isinstance(cb, NonFiniteLoss)]

    (default,) = non_finite()
    assert (default.policy, default.max_skips) == ("stop", 10)
    assert non_finite("lightning.callbacks={non_finite: null}") == []


# --------------------------------------------------------------------------------------- disk full
@pytest.fixture
def tmpfs(tmp_path: Path):
    """A tmpfs of 30 MiB (room for one smoke checkpoint, not two); skipped where mounting is not allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_keeps_the_previous_checkpoint(tmpfs: Path, tmp_path: Path, capsys, monkeypatch):
    import tempfile

    own_tmp = tmp_path / "tmpdir"  # $TMPDIR on another file system than the logdir, and empty
    own_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(own_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))
    rc = cli.run(
        [
            "--base",
            SMOKE,
            "-l",
            str(tmpfs),
            "lightning.trainer.max_steps=4",
            "lightning.modelcheckpoint.params.save_last=false",
            "lightning.modelcheckpoint.params.save_top_k=1",
            "lightning.modelcheckpoint.params.monitor=step",
            "lightning.modelcheckpoint.params.mode=max",
            *QUIET,
        ]
    )
    line = error_line(capsys)
    assert rc == 4
    run = next(tmpfs.iterdir())
    assert line.startswith(f"error: cannot write checkpoint {run / 'checkpoints'}")
    assert "No space left on device" in line
    assert [ckpt(p)["global_step"] for p in (run / "checkpoints").glob("*.ckpt")] == [2]
    assert not [p for p in tmpfs.rglob("*") if p.name.endswith(".tmp")]
    # torch may put an (empty) inductor cache folder there; no checkpoint bytes are ever staged there
    assert not [p for p in own_tmp.rglob("*") if p.is_file() and p.stat().st_size > 0]


def test_disk_full_at_start_leaves_no_run_dir(tmpfs: Path, capsys):
    filler = tmpfs / "filler"
    with pytest.raises(OSError):
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 2**20)
    logdir = tmpfs / "logs"
    assert cli.run(["--base", SMOKE, "-l", str(logdir), *QUIET]) in (2, 4)
    assert "No space left on device" in error_line(capsys)
    assert not logdir.exists() or list(logdir.iterdir()) == []


@pytest.mark.slow
def test_main_py_exits_143_on_sigterm(tmp_path: Path):
    boom = (
        "lightning.callbacks.boom={target: tests.integration.fault_callbacks.RaiseAtStep, "
        "params: {step: 2, kind: sigterm}}"
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--base",
            SMOKE,
            "-l",
            str(tmp_path),
            "lightning.trainer.max_steps=20",
            boom,
            *QUIET,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 143
    assert "error: interrupted by SIGTERM" in proc.stderr and "Traceback" not in proc.stderr
