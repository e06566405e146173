"""What a run cost: the wall-clock of ``trainer.fit`` and the peak memory, in ``resources.json``.

`main.py` adds it to every run as ``lightning.callbacks.resources`` (``=null`` switches it off).
Benchmarks read it to put time and memory beside a method's erasure figures, as the papers'
tables do (seconds and GPU GB per concept).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from unlearn.atomic import atomic_write_text

__all__ = ["RESOURCES_FILE", "ResourceUsage", "peak_rss_mb"]

RESOURCES_FILE = "resources.json"


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class ResourceUsage(pl.Callback):
    """Writes ``<run dir>/resources.json`` when training ends: ``fit_s`` (seconds from the first to
    the end of the last training step of this fit; a resumed run counts from its resume), ``steps``
    (the global step reached), ``peak_rss_mb`` (the process's peak resident memory, model building
    included, since on a CPU that is what has to fit), and ``peak_cuda_mb`` (the peak of
    ``torch.cuda.max_memory_allocated`` during the fit; null off CUDA)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None or not trainer.is_global_zero:
            return
        cuda = pl_module.device.type == "cuda"
        usage = {
            "fit_s": round(time.perf_counter() - self._start, 3),
            "steps": int(trainer.global_step),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated(pl_module.device) / 2**20, 1) if cuda else None,
            "device": str(pl_module.device),
        }
        path = Path(trainer.default_root_dir) / RESOURCES_FILE
        atomic_write_text(path, json.dumps(usage, indent=2) + "\n", "resources")
