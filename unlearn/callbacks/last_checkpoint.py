"""Keep `last.ckpt` current: save it on an exception or Ctrl-C, and at the end of training.

Both only once training has advanced past the step it started (or resumed) at: a crash
during setup or restore, or a resumed run with nothing left to do, would otherwise
overwrite a good checkpoint with weights that were never trained or never loaded.
`main.py` writes checkpoints through `unlearn.checkpoint_io.SafeCheckpointIO` (atomic, and
never with NaN weights), so an interrupted or refused save leaves the previous file intact.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)

__all__ = ["CheckpointOnException", "CheckpointAtTrainEnd"]


class _LastCheckpoint(pl.Callback):
    """Saves ``<ckpt_dir>/<filename>``; knows whether this fit has trained a step."""

    def __init__(self, ckpt_dir: str | Path, filename: str = "last.ckpt"):
        super().__init__()
        self.path = Path(ckpt_dir) / filename
        self._start_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step

    def trained(self, trainer: pl.Trainer) -> bool:
        return self._start_step is not None and trainer.global_step > self._start_step


class CheckpointOnException(_LastCheckpoint):
    """On an exception or interrupt, saves ``last.ckpt``.

    Records what stopped the run (``exception``, ``step``) and whether ``last.ckpt`` was written
    (``saved``), for `main.py`'s closing line. A save that fails here (disk full, non-finite
    weights) is logged, not raised: the exception that stopped training is the one to report.
    """

    def __init__(self, ckpt_dir: str | Path, filename: str = "last.ckpt"):
        super().__init__(ckpt_dir, filename)
        self.exception: BaseException | None = None
        self.step: int | None = None
        self.saved = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.exception, self.step = exception, trainer.global_step
        if not self.trained(trainer):
            log.warning("Stopped before any training step: keeping existing checkpoints as they are")
            return
        log.warning(
            "Training stopped by %s at step %d: saving %s", type(exception).__name__, trainer.global_step, self.path
        )
        try:
            trainer.save_checkpoint(str(self.path), weights_only=False)  # the full state, to resume from
        except (OSError, ValueError) as err:  # WriteError, NonFiniteError
            log.error("could not save %s (the previous file, if any, is kept): %s", self.path, err)
            return
        self.saved = True


class CheckpointAtTrainEnd(_LastCheckpoint):
    """At the end of training, saves ``last.ckpt`` unless it already holds the final step.

    With ``every_n_train_steps`` set, Lightning's `ModelCheckpoint` refreshes ``last.ckpt``
    only at those steps, so a run that stops at ``max_steps`` in between (600 steps, saves
    every 500) would leave the last 100 steps out of the checkpoint that ``--run`` (sample,
    evaluate) and ``--resume`` read.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.trained(trainer):
            return
        # ModelCheckpoint's record of the step it last wrote (it writes last.ckpt with each save)
        saved = getattr(trainer.checkpoint_callback, "_last_global_step_saved", None)
        if saved == trainer.global_step and self.path.is_file():
            return
        log.info(
            "Training ended at step %d after the last periodic checkpoint: saving %s", trainer.global_step, self.path
        )
        trainer.save_checkpoint(str(self.path), weights_only=False)  # the full state, to resume from
