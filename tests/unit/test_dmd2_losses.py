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


def test_on_a_rectified_flow_the_critic_learns_the_velocity_of_the_flows_own_noising():
    from unlearn.diffusion.denoiser import Denoiser
    from unlearn.diffusion.discretization import FlowMatchDiscretization
    from unlearn.objectives.dmd2 import DMD2Objective

    flow = FlowMatchDiscretization(shift=3.0)
    denoiser = Denoiser({"target": "unlearn.diffusion.scalings.FlowScaling"})
    seen = {}

    def critic(x, t, cond):  # a velocity network; remembers what it was asked
        seen.update(x=x, t=t)
        return 0.5 * x

    objective = DMD2Objective(teacher=torch.nn.Identity(), critic=critic, denoiser=denoiser, discretization=flow)
    assert objective.num_timesteps == 1000 and (objective.min_step, objective.max_step) == (20, 980)
    t = torch.tensor([999, 499, 0])
    sigma = objective.sigmas(t)
    expected = 3 * ((t + 1) / 1000) / (1 + 2 * ((t + 1) / 1000))  # shift 3 on the training grid
    torch.testing.assert_close(sigma, expected.float())
    assert sigma[0] == 1.0  # the last timestep is pure noise

    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    loss = objective.critic_denoising_loss(x0, {})
    torch.manual_seed(5)  # the same draws by hand: t on the CPU, then eps
    s = objective.sigmas(torch.randint(0, 1000, (2,))).view(-1, 1, 1, 1)
    eps = torch.randn_like(x0)
    x_t = (1 - s) * x0 + s * eps
    torch.testing.assert_close(seen["x"], x_t)  # the flow's noising (c_in is 1)
    torch.testing.assert_close(seen["t"], 1000 * s.flatten())
    torch.testing.assert_close(loss, ((0.5 * x_t - (eps - x0)) ** 2).mean())  # velocity vs eps - x0
