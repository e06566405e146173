"""Tiny DMD2 engines (the smoke model as teacher) and a quiet Trainer for the DMD2 tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from unlearn.config import instantiate_from_config, load_configs

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "toy" / "smoke.yaml"
DMD2 = ROOT / "configs" / "methods" / "dmd2.yaml"


# The smoke model as the teacher: without its own training recipe (loss, learning rate).
SMOKE_MODEL = ("model.params.loss_fn_config=null", "model.params.base_learning_rate=null")


def build_engine(*overrides: str, seed: int = 0):
    """The smoke model distilled by DMD2; batch 2, no warm-up, plus ``overrides``."""
    torch.manual_seed(seed)
    cfg = load_configs(
        [SMOKE, DMD2],
        [*SMOKE_MODEL, "model.params.batch_size=2", "model.params.scheduler_config.params.warmup_steps=0", *overrides],
    )
    return instantiate_from_config(cfg.model, _path="model")


def trainer(root: Path, max_steps: int, callbacks: list[Any] = (), **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(root),
        callbacks=list(callbacks),
        **kwargs,
    )


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)
