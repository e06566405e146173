"""Writing outputs safely: atomic file writes, non-finite tensors refused, output folders probed first.

Every file is written to a temporary file in its destination folder (``.<name>.<random>.tmp``),
flushed and fsynced, then renamed over the destination with `os.replace`, and the folder is
fsynced. The rename stays inside one folder, so it is atomic on any POSIX file system: a reader
sees the old file or the new one, never a part. On any failure the temporary file is removed
and the previous file is left as it was; nothing is ever written to ``$TMPDIR``. Only a process
killed (SIGKILL) while writing can leave its ``.*.tmp`` file behind; it may be deleted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "NonFiniteError",
    "WriteError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_dir",
    "first_non_finite",
    "require_finite",
    "save_safetensors",
]


class WriteError(OSError):
    """A file could not be written (disk full, read-only, ...); the message names the file."""

    def __init__(self, path: str | Path, what: str, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.filename = str(path)
        self.message = f"cannot write {what} {path}: {cause.strerror or cause}"

    def __str__(self) -> str:
        return self.message


class NonFiniteError(ValueError):
    """A tensor about to be saved holds NaN or inf; the message names the file and the tensor."""


def _fsync_dir(folder: Path) -> None:
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:  # Windows cannot open a folder; its rename is durable enough
        return
    fd = os.open(folder, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems (e.g. network mounts) refuse to sync a folder
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, the file
    written there is fsynced and renamed to ``path``. On an error it is removed and ``path``
    is untouched. OSErrors come out as `WriteError` naming ``path`` and ``what`` it is."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(path)
    except OSError as err:
        raise WriteError(path, what, err) from err
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        _remove(tmp)
        raise WriteError(path, what, err) from err
    except BaseException:
        _remove(tmp)
        raise


def _new_temp_file(path: Path) -> Path:
    """An empty ``.<name>.<random>.tmp`` beside ``path``, created exclusively with the mode a plain
    ``open`` would give (0o666 less the umask; `tempfile.mkstemp` would make it private, 0o600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError as err:  # e.g. the file system went read-only: say so, keep the first error
        log.warning("could not remove the temporary file %s: %s", tmp, err)


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None. One device sync in all."""
    import torch

    floats = [(k, v) for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    by_device: dict[Any, list[int]] = {}
    for i, (_, v) in enumerate(floats):
        by_device.setdefault(v.device, []).append(i)
    bad: list[int] = []
    for indices in by_device.values():
        finite = torch.stack([torch.isfinite(floats[i][1].detach()).all() for i in indices]).cpu()
        bad += [i for i, ok in zip(indices, finite.tolist()) if not ok]
    return floats[min(bad)][0] if bad else None


def require_finite(tensors: Mapping[str, torch.Tensor], path: str | Path, what: str) -> None:
    """`NonFiniteError` naming ``path`` and the first bad tensor if any floating tensor is NaN/inf."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise NonFiniteError(
            f"refusing to save {what} {path}: tensor {bad!r} holds NaN or inf "
            "(training diverged; the previous file, if any, is kept)"
        )


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
    what: str = "weights",
) -> Path:
    """Write ``tensors`` to the ``.safetensors`` file ``path`` atomically, after checking that
    every floating tensor is finite (`NonFiniteError` otherwise, and nothing is written).
    Tensors are detached, moved to the CPU and made contiguous; metadata values become strings."""
    from safetensors.torch import save_file

    path = Path(path)
    require_finite(tensors, path, what)
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path, what) as tmp:
        save_file(cpu, str(tmp), metadata=meta)
    return path


def check_writable_dir(folder: str | Path, what: str) -> Path:
    """Check that files can be created in ``folder`` (or, if it does not exist yet, in its nearest
    existing parent, where it would be made) by creating and removing a probe file. A ValueError
    naming ``what`` and the folder otherwise. Nothing is left behind."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what}: cannot write to {folder}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe.", dir=probe)
    except OSError as err:
        raise ValueError(f"{what}: cannot write to {folder}: {err.strerror or err} ({probe})") from err
    os.close(fd)
    os.unlink(name)
    return folder
