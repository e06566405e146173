"""unlearn.atomic and SafeCheckpointIO: a failed write keeps the previous file and leaves no temporary file."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from unlearn.atomic import (
    NonFiniteError,
    WriteError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_writable_dir,
    first_non_finite,
    save_safetensors,
)
from unlearn.checkpoint import UnsafeCheckpointError, load_state_dict, load_torch_file
from unlearn.checkpoint_io import SafeCheckpointIO


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch) -> Path:
    """A $TMPDIR of its own, to show that nothing is ever staged there."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def leftovers(*folders: Path) -> list[str]:
    return [p.name for f in folders for p in f.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path: Path, tmpdir_env: Path):
    target = tmp_path / "out" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    assert not list(tmpdir_env.iterdir())


def test_new_files_get_the_umask_mode_not_a_private_one(tmp_path: Path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_disk_full_during_write_keeps_the_previous_file(tmp_path: Path, tmpdir_env: Path):
    target = atomic_write_bytes(tmp_path / "last.ckpt", b"good checkpoint")
    with pytest.raises(WriteError, match=r"cannot write checkpoint .*last\.ckpt: No space left on device"):
        with atomic_path(target, "checkpoint") as tmp:
            tmp.write_bytes(b"half of a new")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_bytes() == b"good checkpoint"
    assert leftovers(tmp_path, tmpdir_env) == []


def test_cross_device_rename_keeps_the_previous_file(tmp_path: Path, tmpdir_env: Path, monkeypatch):
    target = atomic_write_bytes(tmp_path / "last.ckpt", b"good checkpoint")

    def exdev(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "replace", exdev)
    with pytest.raises(WriteError, match="last.ckpt"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"good checkpoint"
    assert leftovers(tmp_path, tmpdir_env) == []


def test_an_exception_while_writing_removes_the_temporary_file(tmp_path: Path):
    target = tmp_path / "a.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_save_safetensors_refuses_non_finite_tensors(tmp_path: Path):
    path = save_safetensors({"a": torch.ones(2)}, tmp_path / "erased.safetensors", {"k": 1})
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"erased weights .*erased\.safetensors: tensor 'b' holds NaN or inf"):
        bad = {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]), "c": torch.tensor([float("inf")])}
        save_safetensors(bad, path, what="erased weights")
    assert path.read_bytes() == before
    assert load_state_dict(path)["a"].tolist() == [1.0, 1.0]


def test_first_non_finite_names_the_first_bad_floating_tensor():
    tensors = {
        "i": torch.tensor([1, 2]),
        "ok": torch.zeros(3),
        "inf": torch.tensor([float("-inf")]),
        "nan": torch.tensor([float("nan")]),
    }
    assert first_non_finite(tensors) == "inf"
    assert first_non_finite({"ok": torch.zeros(3), "i": torch.tensor([7])}) is None


def _state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((4,), value)}, "global_step": 3, "epoch": 0}


def test_checkpoint_io_saves_atomically_and_refuses_nan_weights(tmp_path: Path, tmpdir_env: Path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_state(1.0), path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"checkpoint .*last\.ckpt: tensor 'w' holds NaN"):
        io.save_checkpoint(_state(float("nan")), path)
    assert path.read_bytes() == before

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteError, match=r"cannot write checkpoint .*last\.ckpt: No space left on device"):
        io.save_checkpoint(_state(2.0), path)
    assert path.read_bytes() == before
    assert leftovers(path.parent, tmpdir_env) == []
    monkeypatch.undo()
    assert io.load_checkpoint(path)["state_dict"]["w"].tolist() == [1.0] * 4


class _Marker:
    """Unpickling this creates a folder: code running from a file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_code_in_a_checkpoint_never_runs(tmp_path: Path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "global_step": 1, "x": _Marker(marker)}, evil)
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"model\.params\.ckpt_path: refusing to load .*evil\.ckpt: "
        r"it needs pickle to build posix\.mkdir.*save_file",
    ):
        load_state_dict(evil, "model.params.ckpt_path")
    with pytest.raises(UnsafeCheckpointError, match="--resume: refusing"):
        SafeCheckpointIO().preload(evil)
    with pytest.raises(UnsafeCheckpointError):
        SafeCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()


def test_truncated_and_empty_checkpoints_are_one_line_errors(tmp_path: Path):
    good = tmp_path / "good.ckpt"
    torch.save(_state(1.0), good)
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(good.read_bytes()[:100])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for path in (truncated, empty):
        with pytest.raises(ValueError, match=rf"ckpt: cannot read .*{path.name}") as info:
            load_torch_file(path, "ckpt")
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
        SafeCheckpointIO().preload(tmp_path / "plain.pt")


def test_check_writable_dir(tmp_path: Path):
    assert check_writable_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # only probed, nothing created
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--out: cannot write to .*file/sub: .*file is not a folder"):
        check_writable_dir(tmp_path / "file" / "sub", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs (another file system than $TMPDIR's); skipped where mounting is not allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_real_disk_full_on_another_file_system(tmpfs: Path, tmpdir_env: Path):
    target = atomic_write_bytes(tmpfs / "ckpts" / "notes.txt", b"g" * 300_000)
    with pytest.raises(WriteError, match="No space left on device"):
        atomic_write_bytes(target, b"n" * 2_000_000, "notes")
    assert target.read_bytes() == b"g" * 300_000
    io = SafeCheckpointIO()
    last = tmpfs / "ckpts" / "last.ckpt"
    io.save_checkpoint(_state(1.0), last)
    before = last.read_bytes()
    big = {"state_dict": {"w": torch.zeros(500_000)}, "global_step": 4}  # 2 MB: more than is left
    with pytest.raises(WriteError, match=r"cannot write checkpoint .*last\.ckpt: No space left on device"):
        io.save_checkpoint(big, last)  # torch.save says RuntimeError; the OSError underneath is kept
    assert last.read_bytes() == before
    assert leftovers(target.parent, tmpdir_env) == []


def test_read_only_file_system_is_named(tmpfs: Path):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(ValueError, match=r"-l/--logdir: cannot write to .*tmpfs/logs: Read-only file system"):
        check_writable_dir(tmpfs / "logs", "-l/--logdir")


SAVE_FOREVER = """
import sys, torch
from unlearn.checkpoint_io import SafeCheckpointIO
io, path, step = SafeCheckpointIO(), sys.argv[1], 0
while True:
    step += 1
    io.save_checkpoint({"state_dict": {"w": torch.full((2_000_000,), float(step))}, "global_step": step}, path)
"""


@pytest.mark.slow
def test_sigkill_while_saving_never_leaves_a_broken_checkpoint(tmpfs_or_tmp: Path):
    import random
    import signal
    import sys
    import time

    last = tmpfs_or_tmp / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(last)])
    try:
        deadline = time.monotonic() + 60
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.uniform(0.05, 0.3))  # somewhere inside a later save
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] >= 1
    assert torch.equal(saved["state_dict"]["w"], torch.full((2_000_000,), float(saved["global_step"])))
    # at most the killed save's own temporary file is left, beside the checkpoint, never in $TMPDIR
    assert len([p for p in last.parent.iterdir() if p.name.endswith(".tmp")]) <= 1


@pytest.fixture
def tmpfs_or_tmp(tmp_path: Path):
    """A tmpfs (another file system than $TMPDIR's) where mounting is allowed, else a plain folder."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode
        == 0
    )
    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], check=True)
