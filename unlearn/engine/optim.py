"""Optimizers and LR schedules from config blocks, shared by every engine module."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from unlearn.config import instantiate_from_config

DEFAULT_OPTIMIZER = {"target": "torch.optim.AdamW", "params": {}}


def build_optimizer(params: Iterable[Any], lr: float, optimizer_config: dict | None = None) -> torch.optim.Optimizer:
    """``optimizer_config`` is a target block whose params are the optimizer's kwargs."""
    params = list(params)
    if not params or all(isinstance(g, dict) and not g["params"] for g in params):
        raise ValueError("optimizer: no trainable parameters (check the selection / is_trainable settings)")
    cfg = dict(optimizer_config or DEFAULT_OPTIMIZER)
    cfg.setdefault("params", {})
    return instantiate_from_config(cfg, _path="optimizer_config", params=params, lr=lr)


def build_scheduler(optimizer: torch.optim.Optimizer, scheduler_config: dict | None) -> dict | None:
    """A Lightning ``lr_scheduler`` dict stepping every optimizer step, or None."""
    if not scheduler_config:
        return None
    scheduler = instantiate_from_config(scheduler_config, _path="scheduler_config", optimizer=optimizer)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over ``warmup_steps`` then cosine decay to ``min_ratio`` at ``total_steps``.

    With ``total_steps=None`` the rate stays constant after warm-up (the DMD2 and SD recipe).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_ratio: float = 0.0,
    ):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

        def factor(step: int) -> float:
            if warmup_steps and step < warmup_steps:
                return (step + 1) / warmup_steps
            if total_steps is None or total_steps <= warmup_steps:
                return 1.0
            progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        super().__init__(optimizer, factor)
