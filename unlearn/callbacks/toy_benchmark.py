"""`ToyBenchmark`: the toy benchmark of an erasure run, before, during and after training.

It uses only the `unlearn.engine.erasure.ErasureEngine` interface (``erased_concepts``,
``as_original``, ``as_erased``, ``benchmark_extras``, ``make_sampler``, ``generate``,
``canvas_concepts``), so every method gets the same evaluation from one config block, e.g.
``lightning.callbacks.toy_benchmark`` in ``configs/methods/*.yaml`` or ``configs/eval/toy.yaml``.
Models without toy canvas metadata (objects, styles) are skipped with one log line.

Into ``<run_dir>/eval/``:

* ``before/``: the model before erasure (the original; DMD2's teacher) at the start of
  training (``before: true``), once per run: a resumed run keeps the first one;
* ``step_<n>/`` every ``every_n_steps`` training steps, with ``progress.jsonl`` / ``progress.md``
  (e.g. to see whether distillation brings an erased concept back);
* ``metrics.json`` (with ``metrics.md`` and ``grid.png``) at the end of training, of what the
  run exports, and ``before_after.md`` comparing the two.

Every evaluation draws image k of each prompt from seed k (`run_toy_benchmark`) and runs with
the global RNG forked, so evaluating never changes what training draws.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from unlearn.atomic import atomic_write_text
from unlearn.eval.metrics import HEADLINE
from unlearn.eval.report import before_after_table, progress_table, write_metrics_json

log = logging.getLogger(__name__)

__all__ = ["ToyBenchmark"]

DEFAULT_JUDGE = "checkpoints/toy/judge.safetensors"


class ToyBenchmark(pl.Callback):
    """Args:
    images_per_prompt: images of each (object, style) prompt (seeds 0..n-1).
    batch_size: images generated per batch.
    judge: the judge's weights.
    sampler / num_steps / guidance_scale: the sampling settings (default: the model's own).
    before: also evaluate the model before erasure, at the start of training.
    every_n_steps: also evaluate every n training steps; None: only at the end.
    concepts: the erased concept(s) to score; None: the module's ``erased_concepts``.
    subdir: the folder inside the run directory.
    """

    def __init__(
        self,
        images_per_prompt: int = 4,
        batch_size: int = 64,
        judge: str = DEFAULT_JUDGE,
        sampler: str | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        before: bool = True,
        every_n_steps: int | None = None,
        concepts: str | list[str] | None = None,
        subdir: str = "eval",
    ):
        super().__init__()
        for key, value in (
            ("images_per_prompt", images_per_prompt),
            ("batch_size", batch_size),
            ("every_n_steps", every_n_steps),
        ):
            if value is None and key == "every_n_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        self.images_per_prompt, self.batch_size = images_per_prompt, batch_size
        self.judge = judge
        self.sampling = {"sampler": sampler, "num_steps": num_steps, "guidance_scale": guidance_scale}
        self.before = bool(before)
        self.every_n_steps = every_n_steps
        self.concepts = [concepts] if isinstance(concepts, str) else (list(concepts) if concepts else None)
        self.subdir = subdir
        self._active = False

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = getattr(pl_module, "canvas_concepts", None) is not None
        if not self._active:
            log.info("toy benchmark skipped: the model has no toy canvas metadata (objects, styles)")
            return
        if not Path(self.judge).is_file():
            raise FileNotFoundError(f"lightning.callbacks.toy_benchmark.params.judge: no such file: {self.judge}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = self._folder(trainer) / "before"
        if self._active and self.before and trainer.is_global_zero and not (folder / "metrics.json").is_file():
            with pl_module.as_original():
                self.evaluate(pl_module, folder, extras=False)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not (self._active and self.every_n_steps and trainer.is_global_zero and step % self.every_n_steps == 0):
            return
        with pl_module.as_erased():
            metrics = self.evaluate(pl_module, self._folder(trainer) / f"step_{step}")
        self._append_progress(self._folder(trainer), step, metrics)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._active and trainer.is_global_zero):
            return
        folder = self._folder(trainer)
        done = folder / f"step_{trainer.global_step}"
        if self.every_n_steps and (done / "metrics.json").is_file():  # the final model was just evaluated there
            for f in done.iterdir():
                if f.is_file():
                    shutil.copy2(f, folder / f.name)
            after = json.loads((folder / "metrics.json").read_text())
        else:
            with pl_module.as_erased():
                after = self.evaluate(pl_module, folder)
        before_path = folder / "before" / "metrics.json"
        before = json.loads(before_path.read_text()) if before_path.is_file() else None
        table = before_after_table(before, after)
        atomic_write_text(folder / "before_after.md", table + "\n", "benchmark table")
        log.info("toy benchmark, erased %s:\n%s", ", ".join(after.get("erased", [])) or "nothing", table)
        if pl_module.logger is not None:
            pl_module.logger.log_metrics(
                {f"eval/{k}": float(after[k]) for k in HEADLINE if isinstance(after.get(k), (int, float))},
                step=trainer.global_step,
            )

    # ------------------------------------------------------------------ evaluation
    def _folder(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.subdir

    def evaluate(self, pl_module: pl.LightningModule, out_dir: Path, extras: bool = True) -> dict[str, Any]:
        """The toy benchmark of ``pl_module`` as it samples now, into ``out_dir``; ``extras`` adds
        the module's ``benchmark_extras`` (facts of the erased model) to ``metrics.json``."""
        from unlearn.eval.toy_benchmark import run_toy_benchmark

        concepts = self.concepts if self.concepts is not None else list(pl_module.erased_concepts)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            sampler = pl_module.make_sampler(**self.sampling)
            metrics = run_toy_benchmark(
                pl_module,
                erased=concepts,
                judge=self.judge,
                out_dir=out_dir,
                images_per_prompt=self.images_per_prompt,
                batch_size=self.batch_size,
                sampler=sampler,
                model_concepts=pl_module.canvas_concepts,
            )
        facts = pl_module.benchmark_extras() if extras and hasattr(pl_module, "benchmark_extras") else {}
        if facts:
            metrics.update(facts)
            write_metrics_json(metrics, Path(out_dir) / "metrics.json")
        return metrics

    def _append_progress(self, folder: Path, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: float(metrics[k]) for k in HEADLINE if isinstance(metrics.get(k), (int, float))}}
        jsonl = folder / "progress.jsonl"
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()] if jsonl.is_file() else []
        rows = [r for r in rows if r["step"] != step] + [row]  # a resumed run may evaluate a step again
        atomic_write_text(jsonl, "".join(json.dumps(r) + "\n" for r in rows), "benchmark progress")
        atomic_write_text(folder / "progress.md", progress_table(rows) + "\n", "benchmark progress")
        log.info("toy benchmark at step %d: %s", step, ", ".join(f"{k} {row[k]:.2f}" for k in HEADLINE if k in row))
