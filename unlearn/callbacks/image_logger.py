"""Writes the module's `log_images` output as PNG grids into the run's images/ folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision

log = logging.getLogger(__name__)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 1) -> Path:
    """images: (B, C, H, W) in [-1, 1] -> one PNG grid at ``path`` (a single image when B == 1, padding 0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    nrow = nrow or max(1, int(len(images) ** 0.5))
    torchvision.utils.save_image(images, str(path), nrow=nrow, padding=padding)
    return path


class ImageLogger(pl.Callback):
    """Every ``every_n_steps`` training steps (and at the end of training) calls
    ``pl_module.log_images(batch, n=max_images)`` and saves each returned tensor as
    ``images/train/<key>_gs-<step>.png``. Only rank zero writes."""

    def __init__(
        self,
        every_n_steps: int = 1000,
        max_images: int = 8,
        log_first_step: bool = False,
        log_on_train_end: bool = True,
        subdir: str = "images",
    ):
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self.max_images = int(max_images)
        self.log_first_step = log_first_step
        self.log_on_train_end = log_on_train_end
        self.subdir = subdir
        self._last_batch: Any = None

    def _folder(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.subdir / "train"

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        if not trainer.is_global_zero or not hasattr(pl_module, "log_images") or batch is None:
            return
        images = pl_module.log_images(batch, n=self.max_images)
        for key, value in images.items():
            if isinstance(value, torch.Tensor) and value.ndim == 4:
                save_grid(value, self._folder(trainer) / f"{key}_gs-{trainer.global_step:06}.png")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_batch = batch
        step = trainer.global_step
        if (step % self.every_n_steps == 0 and step > 0) or (self.log_first_step and step == 1):
            self._log(trainer, pl_module, batch)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.log_on_train_end:
            self._log(trainer, pl_module, self._last_batch)
