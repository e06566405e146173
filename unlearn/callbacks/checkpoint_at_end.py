"""Save `last.ckpt` when training ends between two periodic checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class CheckpointAtTrainEnd(pl.Callback):
    """At the end of training, saves ``<ckpt_dir>/last.ckpt`` unless it already holds the final step.

    With ``every_n_train_steps`` set, Lightning's `ModelCheckpoint` refreshes ``last.ckpt``
    only at those steps, so a run that stops at ``max_steps`` in between (600 steps, saves
    every 500) would leave the last 100 steps out of the checkpoint that ``--run`` (sample,
    evaluate) and ``--resume`` read. A run that made no step since it started keeps its
    checkpoints as they are.
    """

    def __init__(self, ckpt_dir: str | Path, filename: str = "last.ckpt"):
        super().__init__()
        self.path = Path(ckpt_dir) / filename
        self._start_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start_step is None or trainer.global_step <= self._start_step:
            return
        # ModelCheckpoint's record of the step it last wrote (it writes last.ckpt with each save)
        saved = getattr(trainer.checkpoint_callback, "_last_global_step_saved", None)
        if saved == trainer.global_step and self.path.is_file():
            return
        log.info("Training ended at step %d after the last periodic checkpoint: saving %s",
                 trainer.global_step, self.path)
        trainer.save_checkpoint(str(self.path))
