"""DMD2's pure losses on hand-made tensors."""

from __future__ import annotations

import math

import torch

from unlearn.objectives.dmd2 import (
    distribution_matching_grad,
    distribution_matching_loss,
    fake_score_loss,
    gan_critic_loss,
    gan_generator_loss,
)


def test_dm_loss_gradient_is_the_normalised_fake_minus_real_direction():
    # Two samples of 1 x 2 x 2; sample 0: |x̂ - μ_real| = [1, 1, 2, 0] -> mean 1.0,
    # sample 1: [0.5, 0.5, 0.5, 0.5] -> mean 0.5.
    x_hat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    x0_real = torch.tensor([[[[0.0, 3.0], [1.0, 4.0]]], [[[0.5, -0.5], [0.5, -0.5]]]])
    x0_fake = torch.tensor([[[[2.0, 3.0], [1.0, 1.0]]], [[[1.5, -0.5], [0.0, 0.5]]]])
    grad = distribution_matching_grad(x_hat, x0_real, x0_fake)
    expected = torch.tensor([[[[2.0, 0.0], [0.0, -3.0]]], [[[2.0, 0.0], [-1.0, 2.0]]]])  # (fake - real) / mean
    assert torch.allclose(grad, expected)

    loss = distribution_matching_loss(x_hat, grad)
    assert math.isclose(loss.item(), 0.5 * (expected**2).mean().item(), rel_tol=1e-6)
    loss.backward()
    # d/dx̂ of 0.5 * mean((x̂ - sg(x̂ - grad))^2) = grad / numel: the DM direction, nothing else.
    assert torch.allclose(x_hat.grad, expected / x_hat.numel())


def test_dm_grad_has_no_nans_and_no_graph():
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    grad = distribution_matching_grad(x, torch.zeros_like(x), torch.ones_like(x))  # 1 / 0 -> inf, 0 / 0 -> nan
    assert not grad.requires_grad and torch.isfinite(grad).all()


def test_critic_and_gan_losses():
    eps = torch.tensor([1.0, -1.0, 2.0, 0.0])
    assert fake_score_loss(eps + torch.tensor([1.0, 1.0, -1.0, 1.0]), eps).item() == 1.0
    zero = torch.zeros(3)
    assert math.isclose(gan_generator_loss(zero).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(gan_critic_loss(zero, zero).item(), 2 * math.log(2), rel_tol=1e-6)
    # A confident, correct classifier has a small loss; the generator's loss is then large.
    big = torch.full((3,), 20.0)
    assert gan_critic_loss(big, -big).item() < 1e-8
    assert math.isclose(gan_generator_loss(-big).item(), 20.0, rel_tol=1e-6)
