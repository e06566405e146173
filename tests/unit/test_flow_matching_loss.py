"""The flow-matching training loss: rectified-flow noising, the velocity target, SD3's logit-normal
and uniform timestep densities, the weightings, and the loss of a known network."""

import math

import pytest
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from unlearn.config import instantiate_from_config, load_configs
from unlearn.diffusion.denoiser import Denoiser
from unlearn.diffusion.loss import FlowMatchingLoss, flow_interpolate, velocity_target
from unlearn.diffusion.loss_weighting import CosMapWeighting, UnitWeighting
from unlearn.diffusion.sigma_sampling import LogitNormalSampling, UniformSampling, shift_sigma

FLOW = {"target": "unlearn.diffusion.scalings.FlowScaling"}
LOGIT_NORMAL = {"target": "unlearn.diffusion.sigma_sampling.LogitNormalSampling"}


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    return x0, noise, {"crossattn": torch.randn(4, 2, 6, generator=g)}


def test_interpolation_and_target(data):
    x0, noise, _ = data
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x = flow_interpolate(x0, noise, sigma)
    assert torch.equal(x[0], x0[0]) and torch.equal(x[3], noise[3])
    torch.testing.assert_close(x[1], 0.75 * x0[1] + 0.25 * noise[1])
    assert torch.equal(velocity_target(x0, noise), noise - x0)
    # the target is the derivative of the path in sigma
    h = 1e-3
    fd = (flow_interpolate(x0, noise, sigma + h) - flow_interpolate(x0, noise, sigma)) / h
    torch.testing.assert_close(fd, noise - x0, atol=2e-3, rtol=0)


def test_oracle_velocity_has_zero_loss_and_sees_1000_sigma(data):
    x0, noise, cond = data
    sigma = torch.tensor([0.1, 0.4, 0.7, 0.95])
    seen = []

    def oracle(x_in, t, c):
        seen.append(t)
        return noise - x0

    loss = FlowMatchingLoss(LOGIT_NORMAL)(oracle, Denoiser(FLOW), x0, cond, sigma=sigma, noise=noise)
    assert loss.shape == (4,) and torch.count_nonzero(loss) == 0
    torch.testing.assert_close(seen[0], 1000 * sigma)


def test_loss_of_a_known_network(data):
    x0, noise, cond = data
    sigma = torch.tensor([0.2, 0.5, 0.6, 0.9])
    w = torch.tensor(0.3)

    def net(x_in, t, c):  # v = 0.3 x + t / 1000 + mean(crossattn)
        return w * x_in + t.view(-1, 1, 1, 1) / 1000 + c["crossattn"].mean()

    x = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    err = w * x + sigma.view(-1, 1, 1, 1) + cond["crossattn"].mean() - (noise - x0)
    expected_l2 = (err**2).mean(dim=(1, 2, 3))
    l2 = FlowMatchingLoss(LOGIT_NORMAL)(net, Denoiser(FLOW), x0, cond, sigma=sigma, noise=noise)
    torch.testing.assert_close(l2, expected_l2)
    l1 = FlowMatchingLoss(LOGIT_NORMAL, loss_type="l1")(net, Denoiser(FLOW), x0, cond, sigma=sigma, noise=noise)
    torch.testing.assert_close(l1, err.abs().mean(dim=(1, 2, 3)))
    cosmap = {"target": "unlearn.diffusion.loss_weighting.CosMapWeighting"}
    weighted = FlowMatchingLoss(LOGIT_NORMAL, cosmap)(net, Denoiser(FLOW), x0, cond, sigma=sigma, noise=noise)
    torch.testing.assert_close(weighted, expected_l2 * 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2)))
    # gradients reach the network through the velocity (a parameterised copy of net)
    p = torch.nn.Parameter(torch.tensor(0.3))
    loss = FlowMatchingLoss(LOGIT_NORMAL)(
        lambda x_in, t, c: p * x_in, Denoiser(FLOW), x0, cond, sigma=sigma, noise=noise
    )
    loss.mean().backward()
    expected_grad = (2 * (0.3 * x - (noise - x0)) * x).mean()
    torch.testing.assert_close(p.grad, expected_grad)


def test_seeded_draws_and_refusal_of_non_velocity_models(data):
    x0, _, cond = data
    loss_fn = FlowMatchingLoss(LOGIT_NORMAL)
    net = lambda x_in, t, c: 0.5 * x_in  # noqa: E731
    a = loss_fn(net, Denoiser(FLOW), x0, cond, generator=torch.Generator().manual_seed(3))
    b = loss_fn(net, Denoiser(FLOW), x0, cond, generator=torch.Generator().manual_seed(3))
    c = loss_fn(net, Denoiser(FLOW), x0, cond, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(
        ValueError, match="scaling_config must be unlearn.diffusion.scalings.FlowScaling, got EpsScaling"
    ):
        loss_fn(net, Denoiser({"target": "unlearn.diffusion.scalings.EpsScaling"}), x0, cond)
    with pytest.raises(ValueError, match=r"sigma: expected shape \(4,\)"):
        loss_fn(net, Denoiser(FLOW), x0, cond, sigma=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="loss_type"):
        FlowMatchingLoss(LOGIT_NORMAL, loss_type="huber")


def test_logit_normal_statistics_and_diffusers_draws():
    n = 200_000
    sigma = LogitNormalSampling()(n, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (n,) and sigma.dtype == torch.float32
    assert bool(((sigma > 0) & (sigma < 1)).all())
    logit = torch.log(sigma / (1 - sigma))
    assert abs(logit.mean().item()) < 0.01 and abs(logit.std().item() - 1) < 0.01
    assert abs(sigma.median().item() - 0.5) < 0.005
    # the logit-normal density at its mode (0.5): 4 / sqrt(2 pi) = 1.596 for m = 0, s = 1
    near = ((sigma - 0.5).abs() < 0.01).float().mean().item() / 0.02
    assert abs(near - 4 / math.sqrt(2 * math.pi)) < 0.03
    other = LogitNormalSampling(mean=1.0, std=0.5)(n, generator=torch.Generator().manual_seed(0))
    logit = torch.log(other / (1 - other))
    assert abs(logit.mean().item() - 1) < 0.01 and abs(logit.std().item() - 0.5) < 0.01
    # the very draws of diffusers' SD3 training scripts (compute_density_for_timestep_sampling)
    theirs = compute_density_for_timestep_sampling(
        "logit_normal", 64, logit_mean=0.3, logit_std=1.2, generator=torch.Generator().manual_seed(5)
    )
    ours = LogitNormalSampling(0.3, 1.2)(64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=0)


def test_uniform_and_shift():
    n = 200_000
    u = UniformSampling()(n, generator=torch.Generator().manual_seed(0))
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.001
    theirs = compute_density_for_timestep_sampling("uniform", 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(UniformSampling()(16, generator=torch.Generator().manual_seed(2)), theirs)
    # shift 3 (SD3's schedule): the median 0.5 goes to 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    shifted = LogitNormalSampling(shift=3.0)(n, generator=torch.Generator().manual_seed(0))
    assert abs(shifted.median().item() - 0.75) < 0.005
    s = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(shift_sigma(s, 3.0), torch.tensor([0.0, 0.5, 1.0]))
    assert shift_sigma(s, 1.0) is s
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="shift"):
            UniformSampling(shift=bad)
    with pytest.raises(ValueError, match="std"):
        LogitNormalSampling(std=0)
    with pytest.raises(ValueError, match="n: expected a positive number"):
        LogitNormalSampling()(0)


def test_weightings_equal_diffusers():
    sigma = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    torch.testing.assert_close(CosMapWeighting()(sigma), compute_loss_weighting_for_sd3("cosmap", sigma))
    torch.testing.assert_close(CosMapWeighting()(torch.tensor([0.0, 0.5])), torch.tensor([2 / math.pi, 4 / math.pi]))
    assert torch.equal(UnitWeighting()(sigma), compute_loss_weighting_for_sd3("logit_normal", sigma))


def test_trainer_config_builds_the_loss():
    cfg = load_configs(["configs/trainer/flow_matching.yaml"])
    loss_fn = instantiate_from_config(cfg.model.params.loss_fn_config, _path="model.params.loss_fn_config")
    assert isinstance(loss_fn, FlowMatchingLoss) and isinstance(loss_fn.loss_weighting, UnitWeighting)
    sampler = loss_fn.sigma_sampler
    assert isinstance(sampler, LogitNormalSampling) and (sampler.mean, sampler.std, sampler.shift) == (0.0, 1.0, 1.0)
