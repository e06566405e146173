"""Denoisers, sigma samplers and the standard diffusion loss on toy networks."""

import pytest
import torch

from unlearn.diffusion.denoiser import Denoiser, DiscreteDenoiser
from unlearn.diffusion.loss import StandardDiffusionLoss
from unlearn.diffusion.parameterization import append_dims
from unlearn.diffusion.sigma_sampling import DiscreteSampling, EDMSampling

DISC = {"target": "unlearn.diffusion.discretization.LegacyDDPMDiscretization"}
EPS = {"target": "unlearn.diffusion.scalings.EpsScaling"}
V = {"target": "unlearn.diffusion.scalings.VScaling"}


class ToyNet(torch.nn.Module):
    """out = w * x_in + b * c_noise + mean(crossattn); records its inputs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.b = torch.nn.Parameter(torch.tensor(0.01))
        self.calls = []

    def forward(self, x_in, c_noise, cond):
        self.calls.append((x_in, c_noise))
        return self.w * x_in + self.b * append_dims(c_noise, x_in.ndim) + cond["crossattn"].mean()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, 4, 4, generator=g), {"crossattn": torch.randn(3, 5, 8, generator=g)}


def test_denoiser_composes_scaling(data):
    x, cond = data
    net, sigma = ToyNet(), torch.tensor([0.5, 1.0, 3.0])
    out = Denoiser(EPS)(net, x, sigma, cond)
    s = append_dims(sigma, 4)
    c_in = 1 / (s**2 + 1).sqrt()
    expected = x - s * net(x * c_in, sigma, cond)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(net.calls[0][1], sigma)


def test_discrete_denoiser_gives_integer_timesteps(data):
    x, cond = data
    den = DiscreteDenoiser(EPS, num_idx=1000, discretization_config=DISC)
    t = torch.tensor([999, 500, 3])
    sigma = den.idx_to_sigma(t)
    torch.testing.assert_close(den.sigma_to_idx(sigma * 1.0001), t)
    net = ToyNet()
    den(net, x, sigma * 1.0001, cond)  # off-grid sigma snaps to the grid
    c_noise = net.calls[0][1]
    assert c_noise.dtype == x.dtype
    torch.testing.assert_close(c_noise, t.float())
    # the scaling used the grid sigma, not the perturbed one
    torch.testing.assert_close(net.calls[0][0], x / append_dims((sigma**2 + 1).sqrt(), 4))
    assert "sigmas" not in den.state_dict()


@pytest.mark.parametrize("scaling", [EPS, V])
def test_predict_eps_recovers_the_noise(scaling, data):
    """An oracle network that knows x0 and eps: predict_eps returns eps for eps and v models."""
    x0, cond = data
    eps = torch.randn_like(x0)
    den = DiscreteDenoiser(scaling, num_idx=1000, discretization_config=DISC)
    sigma = den.idx_to_sigma(torch.tensor([10, 400, 990]))
    s = append_dims(sigma, 4)
    x = x0 + s * eps

    def oracle(x_in, c_noise, c):
        return eps if scaling is EPS else (eps - s * x0) / (1 + s**2).sqrt()

    torch.testing.assert_close(den.predict_eps(oracle, x, sigma, cond), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(den(oracle, x, sigma, cond), x0, atol=1e-5, rtol=1e-5)


def test_denoiser_rejects_bad_sigma(data):
    x, cond = data
    with pytest.raises(ValueError, match="sigma"):
        Denoiser(EPS)(ToyNet(), x, torch.ones(2), cond)


def test_discrete_sampling_returns_grid_sigmas():
    sampler = DiscreteSampling(DISC, num_idx=1000)
    g = torch.Generator().manual_seed(0)
    sigmas, idx = sampler(64, generator=g, return_idx=True)
    assert sigmas.shape == (64,) and idx.dtype == torch.long
    torch.testing.assert_close(sigmas, sampler.sigmas[idx])
    assert 0 <= int(idx.min()) and int(idx.max()) < 1000 and len(set(idx.tolist())) > 30
    g2 = torch.Generator().manual_seed(0)
    torch.testing.assert_close(sampler(64, generator=g2), sigmas)


def test_edm_sampling_log_normal():
    g = torch.Generator().manual_seed(0)
    sigmas = EDMSampling(p_mean=-1.2, p_std=1.2)(20000, generator=g)
    log = sigmas.log()
    assert abs(float(log.mean()) + 1.2) < 0.05 and abs(float(log.std()) - 1.2) < 0.05


def test_eps_loss_equals_hand_computed_eps_mse(data):
    x0, cond = data
    loss_fn = StandardDiffusionLoss(
        sigma_sampler_config={
            "target": "unlearn.diffusion.sigma_sampling.DiscreteSampling",
            "params": {"discretization_config": DISC, "num_idx": 1000},
        },
        loss_weighting_config={"target": "unlearn.diffusion.loss_weighting.EpsWeighting"},
    )
    den = DiscreteDenoiser(EPS, num_idx=1000, discretization_config=DISC)
    net = ToyNet()
    loss = loss_fn(net, den, x0, cond, generator=torch.Generator().manual_seed(3))
    assert loss.shape == (3,)
    # reproduce the draws: sigma first, then the noise
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 1000, (3,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    sigma = den.idx_to_sigma(idx)
    s = append_dims(sigma, 4)
    x_t = (x0 + s * noise) / (1 + s**2).sqrt()  # the DDPM latent the UNet sees
    eps_pred = net.w * x_t + net.b * append_dims(idx.float(), 4) + cond["crossattn"].mean()
    expected = ((eps_pred - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    loss.mean().backward()
    assert net.w.grad is not None and net.w.grad.abs() > 0


def test_loss_l1_and_overrides(data):
    x0, cond = data
    loss_fn = StandardDiffusionLoss(
        sigma_sampler_config=EDMSampling(),
        loss_weighting_config={"target": "unlearn.diffusion.loss_weighting.UnitWeighting"},
        loss_type="l1",
    )
    sigma, noise = torch.full((3,), 2.0), torch.randn_like(x0)
    zero_net = lambda x_in, c_noise, c: torch.zeros_like(x_in)  # noqa: E731
    loss = loss_fn(zero_net, Denoiser(EPS), x0, cond, sigma=sigma, noise=noise)
    # D = x (eps net outputs 0), so |D - x0| = sigma |noise|
    torch.testing.assert_close(loss, (2.0 * noise.abs()).mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="loss_type"):
        StandardDiffusionLoss(EDMSampling(), {"target": "unlearn.diffusion.loss_weighting.UnitWeighting"}, "l3")


def test_offset_noise_changes_the_loss(data):
    x0, cond = data
    weighting = {"target": "unlearn.diffusion.loss_weighting.UnitWeighting"}
    zero_net = lambda x_in, c_noise, c: torch.zeros_like(x_in)  # noqa: E731
    sigma = torch.ones(3)
    plain = StandardDiffusionLoss(EDMSampling(), weighting)(
        zero_net, Denoiser(EPS), x0, cond, generator=torch.Generator().manual_seed(0), sigma=sigma
    )
    offset = StandardDiffusionLoss(EDMSampling(), weighting, offset_noise_level=0.5)(
        zero_net, Denoiser(EPS), x0, cond, generator=torch.Generator().manual_seed(0), sigma=sigma
    )
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    noise = noise + 0.5 * torch.randn(3, 2, generator=g)[:, :, None, None]
    torch.testing.assert_close(offset, (noise**2).mean(dim=(1, 2, 3)))
    assert not torch.allclose(plain, offset)


def test_components_build_from_config(data):
    from unlearn.config import instantiate_from_config

    x, cond = data
    den = instantiate_from_config(
        {
            "target": "unlearn.diffusion.denoiser.DiscreteDenoiser",
            "params": {"scaling_config": EPS, "num_idx": 1000, "discretization_config": DISC},
        }
    )
    sampler = instantiate_from_config(
        {
            "target": "unlearn.diffusion.samplers.EulerSampler",
            "params": {
                "discretization_config": {**DISC, "params": {"timestep_spacing": "leading", "steps_offset": 1}},
                "num_steps": 4,
                "guider_config": {"target": "unlearn.diffusion.guiders.VanillaCFG", "params": {"scale": 2.0}},
            },
        }
    )
    assert sampler.guider.scale == 2.0 and sampler.discretization.timesteps(4).tolist() == [751, 501, 251, 1]
    uc = {"crossattn": torch.zeros_like(cond["crossattn"])}
    out = sampler(lambda x_, s, c: den(ToyNet(), x_, s, c), x, cond, uc=uc)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="scaling_config"):
        Denoiser(None)
