"""`SafeCheckpointIO`: how the Trainer writes and reads `.ckpt` files (a Lightning CheckpointIO plugin).

* Saves are atomic on any file system (`unlearn.atomic.atomic_path`: a temporary file in the
  checkpoint folder, fsync, rename); a failed save (disk full, I/O error) leaves the previous
  file intact and no temporary file anywhere, and is a `WriteError` naming the checkpoint.
  Lightning's own save stages the file in ``$TMPDIR`` when that is another file system, and a
  kill during the copy leaves a truncated checkpoint; this one never does.
* A checkpoint whose ``state_dict`` holds a NaN or inf tensor is refused (`NonFiniteError`), so a
  diverged run never overwrites a good checkpoint.
* Loads use ``weights_only=True`` (`unlearn.checkpoint.load_torch_file`): a file that would need
  pickle to run code is refused with a one-line message. `preload` reads a checkpoint before the
  run is assembled, so a bad ``--resume`` file fails before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from unlearn.atomic import atomic_path, require_finite
from unlearn.checkpoint import load_torch_file

log = logging.getLogger(__name__)

__all__ = ["SafeCheckpointIO"]


class _KeepsWriteError:
    """The file ``torch.save`` writes to, remembering the OSError a write raised."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as err:
            self.error = err
            raise


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, finite-only saves and ``weights_only`` loads of Lightning checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: dict[str, dict[str, Any]] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        require_finite(checkpoint.get("state_dict", {}), path, "checkpoint")
        with atomic_path(path, "checkpoint") as tmp, open(tmp, "wb") as f:
            out = _KeepsWriteError(f)
            try:
                torch.save(checkpoint, out)
            except RuntimeError:
                if out.error is not None:  # torch reports a failed write (ENOSPC, EIO) as a RuntimeError
                    raise out.error from None
                raise

    def preload(self, path: str | Path, what: str = "--resume") -> dict[str, Any]:
        """Read the checkpoint at ``path`` now (ValueError naming ``what`` if it is unreadable,
        unsafe or not a Lightning checkpoint); the Trainer's restore from it then reuses it."""
        checkpoint = load_torch_file(path, what)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
            raise ValueError(f"{what}: {path} is not a Lightning checkpoint (no state_dict and global_step)")
        self._preloaded = {str(path): checkpoint}
        return checkpoint

    def load_checkpoint(
        self, path, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if str(path) in self._preloaded:
            return self._preloaded.pop(str(path))  # restore once; do not keep the weights twice
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return load_torch_file(path, "checkpoint", map_location=map_location or "cpu")
