"""NonFiniteLoss: a NaN loss or gradient stops (or skips) the step before the optimizer changes the weights."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from unlearn.callbacks import NonFiniteLoss, NonFiniteLossError


class Tiny(pl.LightningModule):
    """A linear layer; the loss is NaN at the steps in ``nan_steps``. ``own_backward``: manual
    optimization with a plain ``loss.backward()``, as the masks engine runs its backward."""

    def __init__(self, nan_steps=(), own_backward: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        self.nan_steps = set(nan_steps)
        self.automatic_optimization = not own_backward
        self.weights: dict[int, torch.Tensor] = {}  # global_step -> weights before that step

    def train_dataloader(self):
        return DataLoader(torch.ones(64, 3), batch_size=4)

    def training_step(self, batch, batch_idx):
        self.weights[self.global_step] = self.layer.weight.detach().clone()
        scale = float("nan") if self.global_step in self.nan_steps else 1.0
        term = (self.layer(batch) * scale).pow(2).mean()
        self.loss_terms = {"loss_fit": term, "loss_other": torch.tensor(0.0)}
        if self.automatic_optimization:
            return term
        opt = self.optimizers()
        opt.zero_grad()
        term.backward()
        opt.step()
        return term.detach()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module: Tiny, callback: NonFiniteLoss, steps: int = 5) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(module)
    return trainer


@pytest.mark.parametrize("own_backward", [False, True])
def test_stop_names_step_and_term_and_keeps_the_last_finite_weights(own_backward: bool):
    module = Tiny(nan_steps={2}, own_backward=own_backward)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at step 2: loss_fit = nan; stopped before the "
        r"optimizer step",
    ):
        fit(module, NonFiniteLoss())
    assert torch.equal(module.layer.weight, module.weights[2])
    assert torch.isfinite(module.layer.weight).all()


def test_skip_drops_the_bad_step_and_goes_on():
    module = Tiny(nan_steps={2})
    callback = NonFiniteLoss(policy="skip", max_skips=1)
    trainer = fit(module, callback)
    assert trainer.global_step == 5 and callback.skipped == 1
    assert torch.equal(module.weights[3], module.weights[2])  # the skipped step changed nothing
    assert not torch.equal(module.weights[2], module.weights[1])
    assert torch.isfinite(module.layer.weight).all()


def test_skip_stops_after_max_skips():
    module = Tiny(nan_steps={1, 2, 3, 4})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3: loss_fit = nan.*after skipping 2 steps"):
        fit(module, NonFiniteLoss(policy="skip", max_skips=2))
    assert torch.equal(module.layer.weight, module.weights[1])


class NanGradient(Tiny):
    """A finite loss whose gradient is NaN at ``nan_steps`` (sqrt at 0), with no loss_terms."""

    def training_step(self, batch, batch_idx):
        self.weights[self.global_step] = self.layer.weight.detach().clone()
        shift = 0.0 if self.global_step in self.nan_steps else 1.0
        return (self.layer.weight * 0 + shift).abs().sqrt().sum() + self.layer(batch).pow(2).mean()


def test_a_non_finite_gradient_under_a_finite_loss_names_the_parameter():
    module = NanGradient(nan_steps={1})
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at step 1: layer\.weight \(the loss is finite"):
        fit(module, NonFiniteLoss())
    assert torch.equal(module.layer.weight, module.weights[1])


def test_params_are_checked():
    with pytest.raises(ValueError, match=r"lightning\.callbacks\.non_finite\.params\.policy: expected one of"):
        NonFiniteLoss(policy="halt")
    with pytest.raises(ValueError, match=r"max_skips: expected an integer >= 0, got 'x'"):
        NonFiniteLoss(policy="skip", max_skips="x")
