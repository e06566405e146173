"""`ExportArtifacts`: write a method's artefact when, and only when, its run finished.

At the end of training it calls the module's ``export(run_dir)`` (``erased.safetensors``,
``masks.safetensors``, ``student.safetensors``, ...). A run that stops early (an interrupt, a
non-finite loss, an error) writes no export and says so: the run's ``last.ckpt`` holds its
state, and a resumed run that finishes exports then.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)

__all__ = ["ExportArtifacts"]


class ExportArtifacts(pl.Callback):
    """Calls ``pl_module.export(<run dir>)`` on rank zero at the end of a finished run."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.export(Path(trainer.default_root_dir))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero:
            name = getattr(pl_module, "export_name", "") or "the export"
            log.warning(
                "training stopped at step %d by %s: %s was not written",
                trainer.global_step,
                type(exception).__name__,
                name,
            )
