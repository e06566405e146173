"""Stop (or skip) a training step whose loss or gradients are NaN or inf, before it changes the weights.

`main.py` adds it to every run as ``lightning.callbacks.non_finite``; a config or an override sets
its params, e.g. ``lightning.callbacks.non_finite.params.policy=skip`` or
``lightning.callbacks.non_finite=null`` to switch it off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLoss", "NonFiniteLossError"]

POLICIES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """Training stopped at a non-finite loss or gradient; the weights are those of the last finite step."""


class NonFiniteLoss(pl.Callback):
    """Checks each step's loss (``on_before_backward``: automatic optimization and
    ``manual_backward``) and, before each optimizer step, that optimizer's gradients (which also
    covers engines that run their own backward).

    Args:
        policy: ``stop`` (default): raise `NonFiniteLossError` naming the step and the loss term;
            the weights stay those of the last finite step. ``skip``: drop that step's gradients so
            the optimizer changes nothing, and stop once more than ``max_skips`` steps were skipped.
        max_skips: how many steps ``skip`` may drop in one run (the count is saved in checkpoints,
            so a resumed run goes on counting).

    The term is named from the module's ``loss_terms`` (a dict name -> tensor that engines set in
    each training step) when it has one, else "loss". Under 16-bit mixed precision the gradient
    scaler skips steps with inf gradients by design, so only NaN losses count there.
    """

    def __init__(self, policy: str = "stop", max_skips: int = 10):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(
                f"lightning.callbacks.non_finite.params.policy: expected one of {POLICIES}, got {policy!r}"
            )
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
            raise ValueError(
                f"lightning.callbacks.non_finite.params.max_skips: expected an integer >= 0, got {max_skips!r}"
            )
        self.policy = policy
        self.max_skips = max_skips
        self.skipped = 0
        self._bad_loss: str | None = None  # what was non-finite in the current step's loss

    # ------------------------------------------------------------------ hooks
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        scaler = _grad_scaler(trainer)
        value = loss.detach()
        bad = bool(torch.isnan(value).any()) if scaler is not None else not bool(torch.isfinite(value).all())
        if not bad:
            return
        self._bad_loss = _bad_term(pl_module) or f"loss = {_value(value)}"
        if self.policy == "stop":
            self._stop(trainer, self._bad_loss)
        # skip: the backward runs; its non-finite gradients are dropped before the optimizer step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad_loss, self._bad_loss = self._bad_loss, None
        grads_bad = _grad_scaler(trainer) is None and not _all_finite([p.grad for p in params])
        if bad_loss is None and not grads_bad:
            return
        what = bad_loss or _bad_term(pl_module)
        kind = "loss" if what else "gradient"
        what = what or f"{_first_bad_param(pl_module, params)} (the loss is finite)"
        if self.policy == "stop":
            self._stop(trainer, what, kind)
        self.skipped += 1
        if self.skipped > self.max_skips:
            self._stop(trainer, what, kind, f"after skipping {self.max_skips} steps (max_skips)")
        for p in params:
            p.grad = None  # the optimizer leaves parameters without a gradient unchanged
        log.warning(
            "step %d: %s is not finite: skipped the optimizer step (%d of max_skips %d)",
            trainer.global_step,
            what,
            self.skipped,
            self.max_skips,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    # ---------------------------------------------------------------- helpers
    def _stop(self, trainer: pl.Trainer, what: str, kind: str = "loss", why: str = "") -> None:
        how = why or "(lightning.callbacks.non_finite.params.policy=skip skips such steps)"
        raise NonFiniteLossError(
            f"non-finite {kind} at step {trainer.global_step}: {what}; stopped before the "
            f"optimizer step, so the weights are those of step {trainer.global_step} {how}"
        )


def _grad_scaler(trainer: pl.Trainer) -> Any:
    return getattr(trainer.precision_plugin, "scaler", None)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    return all(bool(torch.stack([torch.isfinite(t).all() for t in ts]).all()) for ts in by_device.values())


def _bad_term(pl_module: pl.LightningModule) -> str | None:
    """``"loss_erase = nan"``: the first non-finite entry of ``pl_module.loss_terms``, if any."""
    terms = getattr(pl_module, "loss_terms", None)
    if isinstance(terms, Mapping):
        for name, value in terms.items():
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.detach()).all()):
                return f"{name} = {_value(value)}"
    return None


def _value(t: torch.Tensor) -> str:
    t = t.detach().float()
    return str(t.item()) if t.numel() == 1 else "nan" if bool(torch.isnan(t).any()) else "inf"


def _first_bad_param(pl_module: pl.LightningModule, params: list[torch.Tensor]) -> str:
    names = {id(p): n for n, p in pl_module.named_parameters()}
    for p in params:
        if not bool(torch.isfinite(p.grad).all()):
            return names.get(id(p), "a parameter")
    return "a parameter"
