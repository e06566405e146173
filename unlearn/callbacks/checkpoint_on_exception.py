"""Save `last.ckpt` when training stops on an exception or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class CheckpointOnException(pl.Callback):
    """On an exception or interrupt, saves ``<ckpt_dir>/last.ckpt``.

    Only once training has advanced past the step it started (or resumed) at: a crash
    during setup or restore would otherwise overwrite a good checkpoint with weights
    that were never trained or never loaded. Lightning writes checkpoints through an
    fsspec transaction (temporary file, then rename), so an interrupted save leaves the
    previous file intact.
    """

    def __init__(self, ckpt_dir: str | Path, filename: str = "last.ckpt"):
        super().__init__()
        self.path = Path(ckpt_dir) / filename
        self._start_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._start_step is None or trainer.global_step <= self._start_step:
            log.warning("Stopped before any training step: keeping existing checkpoints as they are")
            return
        log.warning("Training stopped by %s: saving %s", type(exception).__name__, self.path)
        trainer.save_checkpoint(str(self.path))
