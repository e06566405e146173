"""Callbacks that break training on purpose, to test checkpoints on interrupt."""

import lightning.pytorch as pl


class RaiseAtStep(pl.Callback):
    def __init__(self, step: int, kind: str = "runtime"):
        self.step = step
        self.kind = kind

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.kind == "interrupt":
                raise KeyboardInterrupt
            raise RuntimeError(f"boom at step {self.step}")
