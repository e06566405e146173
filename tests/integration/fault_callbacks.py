"""Callbacks that break training on purpose, to test checkpoints and exit codes on interrupt."""

import os
import signal

import lightning.pytorch as pl


class RaiseAtStep(pl.Callback):
    """At ``step``: raise (``runtime``, ``interrupt``) or send this process a signal (``sigterm``, ``sigint``)."""

    def __init__(self, step: int, kind: str = "runtime"):
        self.step = step
        self.kind = kind

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.kind == "interrupt":
                raise KeyboardInterrupt
            if self.kind in ("sigterm", "sigint"):
                os.kill(os.getpid(), signal.SIGTERM if self.kind == "sigterm" else signal.SIGINT)
                return
            raise RuntimeError(f"boom at step {self.step}")
