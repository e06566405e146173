"""End to end: main.py trains the smoke config, resumes, survives interrupts; sample.py writes images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.scripts import load_script
from unlearn import cli

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def train(logdir: Path, *extra: str) -> Path:
    return cli.main(["--base", SMOKE, "--logdir", str(logdir), *extra])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("logs")
    return train(logdir, "--name", "smoke", "lightning.trainer.max_steps=4")


def test_run_directory_layout(trained_run: Path):
    assert trained_run.name.endswith("_smoke")
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert ckpt_step(trained_run / "checkpoints" / "last.ckpt") == 4
    # every_n_train_steps=2 in the smoke config: steps 2 and 4 are kept besides last.ckpt.
    steps = sorted(ckpt_step(p) for p in (trained_run / "checkpoints").glob("epoch=*.ckpt"))
    assert steps == [2, 4]
    project = list((trained_run / "configs").glob("*-project.yaml"))
    lightning_cfg = list((trained_run / "configs").glob("*-lightning.yaml"))
    assert len(project) == 1 and len(lightning_cfg) == 1
    saved = project[0].read_text()
    assert "DiffusionEngine" in saved and "lightning" not in saved.split("\n")[0]
    assert "max_steps: 4" in lightning_cfg[0].read_text()
    # The image logger writes a sample grid at the end of training.
    assert list((trained_run / "images" / "train").glob("samples_gs-000004.png"))
    # The resources callback, a default of every run, records the fit's time and peak memory.
    usage = json.loads((trained_run / "resources.json").read_text())
    assert usage["steps"] == 4 and usage["device"] == "cpu" and usage["peak_cuda_mb"] is None
    assert 0 < usage["fit_s"] < 600 and 100 < usage["peak_rss_mb"] < 24 * 1024


def test_an_interrupted_run_writes_no_resources_file(logdir: Path):
    cb = "lightning.callbacks.boom={target: tests.integration.fault_callbacks.RaiseAtStep, params: {step: 2}}"
    with pytest.raises(RuntimeError, match="boom at step 2"):
        train(logdir, "lightning.trainer.max_steps=10", cb)
    assert not (next(logdir.iterdir()) / "resources.json").exists()  # a partial fit's figures would mislead


def test_last_ckpt_holds_the_final_step_between_periodic_saves(tmp_path: Path):
    # smoke.yaml saves every 2 steps; a run stopping at 5 must not leave last.ckpt at 4
    run = train(tmp_path, "--name", "odd", "lightning.trainer.max_steps=5")
    last = run / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == 5
    assert sorted(ckpt_step(p) for p in (run / "checkpoints").glob("epoch=*.ckpt")) == [2, 4]
    # resuming a finished run trains nothing and leaves last.ckpt untouched
    stamp = last.stat().st_mtime_ns
    cli.main(["--resume", str(run), "lightning.trainer.max_steps=5"])
    assert last.stat().st_mtime_ns == stamp and ckpt_step(last) == 5


def test_resume_from_directory_continues_at_saved_step(trained_run: Path, tmp_path: Path):
    import shutil

    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    out = cli.main(["--resume", str(run), "lightning.trainer.max_steps=6"])
    assert out == run
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 6
    # The resumed run saved its merged config again, with the new override on top.
    lightning_cfgs = sorted((run / "configs").glob("*-lightning.yaml"))
    assert any("max_steps: 6" in p.read_text() for p in lightning_cfgs)


def test_resume_from_ckpt_finds_its_run(trained_run: Path, tmp_path: Path):
    import shutil

    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    step2 = next(p for p in (run / "checkpoints").glob("epoch=*.ckpt") if ckpt_step(p) == 2)
    out = cli.main(["--resume", str(step2), "lightning.trainer.max_steps=3"])
    assert out == run
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 3


def test_exception_saves_last_ckpt(logdir: Path):
    cb = "lightning.callbacks.boom={target: tests.integration.fault_callbacks.RaiseAtStep, params: {step: 3}}"
    with pytest.raises(RuntimeError, match="boom at step 3"):
        train(logdir, "lightning.trainer.max_steps=10", "lightning.modelcheckpoint.params.every_n_train_steps=100", cb)
    run = next(logdir.iterdir())
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 3


def test_interrupt_saves_last_ckpt_and_exits(logdir: Path):
    import signal

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C while it shuts down
    cb = (
        "lightning.callbacks.boom={target: tests.integration.fault_callbacks.RaiseAtStep, "
        "params: {step: 2, kind: interrupt}}"
    )
    try:
        with pytest.raises(SystemExit):
            train(
                logdir, "lightning.trainer.max_steps=10", "lightning.modelcheckpoint.params.every_n_train_steps=100", cb
            )
    finally:
        signal.signal(signal.SIGINT, handler)
    run = next(logdir.iterdir())
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 2


def test_crash_before_any_step_keeps_the_good_checkpoint(trained_run: Path, tmp_path: Path):
    import shutil

    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    cb = "lightning.callbacks.boom={target: tests.integration.fault_callbacks.RaiseAtStep, params: {step: 4}}"
    with pytest.raises(RuntimeError):
        cli.main(["--resume", str(run), "lightning.trainer.max_steps=8", cb])
    assert last.read_bytes() == before


def test_bad_inputs_give_clear_errors(logdir: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no such run directory or checkpoint"):
        cli.main(["--resume", str(tmp_path / "nope")])
    with pytest.raises(
        Exception, match="max_step' exists in no config file; did you mean 'lightning.trainer.max_steps'"
    ):
        train(logdir, "lightning.trainer.max_step=2")
    with pytest.raises(Exception, match=r"model\.params\.network_config\.target: no module named"):
        train(logdir, "model.params.network_config.target=unlearn.nope.Net")
    empty = tmp_path / "emptyrun"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no last.ckpt"):
        cli.main(["--resume", str(empty)])


def test_main_py_reports_config_errors_without_traceback(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--base",
            SMOKE,
            "--logdir",
            str(tmp_path),
            "model.params.nope_key_x.y=1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: override 'model.params.nope_key_x.y=1'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_is_fast():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0 and "--resume" in proc.stdout
    # --help must not import torch or Lightning.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, unlearn.cli; print('torch' in sys.modules, 'lightning' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert probe.stdout.strip() == "False False"


def test_sample_script_writes_images(trained_run: Path, tmp_path: Path):
    sample = load_script("sample.py")
    out = tmp_path / "samples"
    written = sample.main(
        [
            "--run",
            str(trained_run),
            "--prompt",
            "a striped circle",
            "--prompt",
            "a dotted star",
            "--n-per-prompt",
            "3",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--out",
            str(out),
        ]
    )
    assert len(written) == 6
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert Image.open(path).size == (16, 16)
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 17 + 1, 2 * 17 + 1)  # 3 columns, 2 rows, 1 px padding
    # Same seed -> same image; from the .ckpt path too.
    again = sample.main(
        [
            "--ckpt",
            str(trained_run / "checkpoints" / "last.ckpt"),
            "--prompt",
            "a striped circle",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "again"),
        ]
    )
    assert list(Image.open(again[0]).getdata()) == list(Image.open(written[0]).getdata())


def test_ema_config_keeps_averaged_and_raw_weights(logdir: Path):
    run = cli.main(
        [
            "--base",
            SMOKE,
            str(ROOT / "configs" / "trainer" / "ema.yaml"),
            "--logdir",
            str(logdir),
            "lightning.trainer.max_steps=2",
            "lightning.callbacks.image_logger=null",
        ]
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt
    key = next(k for k in ckpt["state_dict"] if k.startswith("network.") and k.endswith("weight"))
    # decay 0.999 after 2 steps: the average is close to, but not equal to, the trained weights.
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])


def test_no_train_builds_the_run_without_training(logdir: Path):
    run = train(logdir, "--no-train")
    assert len(list((run / "configs").glob("*-project.yaml"))) == 1
    assert not list((run / "checkpoints").glob("*.ckpt"))


def test_tensorboard_logger_and_bf16_on_cpu(logdir: Path):
    run = cli.main(
        [
            "--base",
            SMOKE,
            str(ROOT / "configs" / "trainer" / "tensorboard.yaml"),
            "--logdir",
            str(logdir),
            "lightning.trainer.max_steps=1",
            "lightning.trainer.precision=bf16-mixed",
            "lightning.callbacks.image_logger=null",
        ]
    )
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert ckpt_step(run / "checkpoints" / "last.ckpt") == 1


def test_overrides_right_after_base_files(logdir: Path):
    # As users write it: the overrides follow the --base files directly.
    run = cli.main(
        [
            "--logdir",
            str(logdir),
            "--no-train",
            "--base",
            SMOKE,
            "lightning.trainer.max_steps=3",
            "model.params.base_learning_rate=0.5",
        ]
    )
    saved = next((run / "configs").glob("*-project.yaml")).read_text()
    assert "base_learning_rate: 0.5" in saved
    assert "max_steps: 3" in next((run / "configs").glob("*-lightning.yaml")).read_text()


def test_long_override_value_after_base_files_is_an_override():
    # A value longer than a file name may be (e.g. a list of preserve prompts) is no file to stat.
    long_value = ";".join(["something in striped style"] * 20)
    opts = cli.parse_args(["--base", SMOKE, f"model.params.preserve={long_value}", "lr=1e-3"])
    assert opts.base == [SMOKE]
    assert opts.overrides == [f"model.params.preserve={long_value}", "lr=1e-3"]


def test_main_py_reports_bad_values_without_traceback(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--base",
            SMOKE,
            "--logdir",
            str(tmp_path),
            "model.params.network_config.params.attention=flash9",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "attention: expected one of" in proc.stderr and "Traceback" not in proc.stderr
