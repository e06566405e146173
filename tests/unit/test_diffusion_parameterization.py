"""eps / x0 / v conversions, scalings, loss weightings."""

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from unlearn.diffusion import parameterization as P
from unlearn.diffusion.loss_weighting import EDMWeighting, EpsWeighting, UnitWeighting, VWeighting
from unlearn.diffusion.scalings import EDMScaling, EpsScaling, VScaling, VScalingWithEDMcNoise


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.03, 1.0, 14.6], dtype=torch.float64)
    return x0, eps, sigma


def test_append_dims():
    t = torch.arange(3.0)
    assert P.append_dims(t, 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="ndim"):
        P.append_dims(torch.zeros(2, 2), 1)


def test_eps_x0_round_trip(batch):
    x0, eps, sigma = batch
    x = x0 + P.append_dims(sigma, 4) * eps
    torch.testing.assert_close(P.x0_from_eps(x, eps, sigma), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(P.eps_from_x0(x, x0, sigma), eps, atol=1e-5, rtol=0)


def test_v_round_trip_and_definition(batch):
    x0, eps, sigma = batch
    x = x0 + P.append_dims(sigma, 4) * eps
    v = P.v_from_eps_x0(eps, x0, sigma)
    # Salimans & Ho: v = alpha eps - sigma_vp x0 with alpha = sqrt(abar), sigma_vp = sqrt(1 - abar)
    abar = P.append_dims(P.alphas_cumprod_from_sigma(sigma), 4)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)
    torch.testing.assert_close(P.x0_from_v(x, v, sigma), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(P.eps_from_v(x, v, sigma), eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(P.v_from_x_x0(x, x0, sigma), v, atol=1e-5, rtol=0)


def test_ddpm_latent_round_trip(batch):
    x0, eps, sigma = batch
    x = x0 + P.append_dims(sigma, 4) * eps
    abar = P.append_dims(P.alphas_cumprod_from_sigma(sigma), 4)
    x_t = P.to_ddpm_latent(x, sigma)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    torch.testing.assert_close(P.from_ddpm_latent(x_t, sigma), x)
    torch.testing.assert_close(P.sigma_from_alphas_cumprod(P.alphas_cumprod_from_sigma(sigma)), sigma)


def test_scalar_sigma_and_bad_shape(batch):
    x0, eps, _ = batch
    torch.testing.assert_close(P.x0_from_eps(x0, eps, 2.0), x0 - 2.0 * eps)
    with pytest.raises(ValueError, match="sigma"):
        P.x0_from_eps(x0, eps, torch.ones(2))


def _denoise(scaling, x, sigma, net_out):
    c_skip, c_out, c_in, _ = scaling(P.append_dims(sigma, x.ndim))
    return c_skip * x + c_out * net_out


def test_eps_and_v_scalings_recover_x0(batch):
    x0, eps, sigma = batch
    x = x0 + P.append_dims(sigma, 4) * eps
    torch.testing.assert_close(_denoise(EpsScaling(), x, sigma, eps), x0)
    torch.testing.assert_close(_denoise(VScaling(), x, sigma, P.v_from_eps_x0(eps, x0, sigma)), x0)
    for scaling in (EpsScaling(), VScaling()):
        c_noise = scaling(sigma)[3]
        torch.testing.assert_close(c_noise, sigma)
    torch.testing.assert_close(VScalingWithEDMcNoise()(sigma)[3], 0.25 * sigma.log())


def test_scalings_match_diffusers_euler_formulas():
    """c_in is diffusers' scale_model_input; D matches pred_original_sample for eps and v."""
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    sample, out = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    t = sched.timesteps[3]
    sigma = sched.sigmas[3].expand(2)
    sched._step_index = 3
    c_in = EpsScaling()(P.append_dims(sigma, 4))[2]
    torch.testing.assert_close(sched.scale_model_input(sample, t), sample * c_in)
    for prediction_type, scaling in (("epsilon", EpsScaling()), ("v_prediction", VScaling())):
        sched.register_to_config(prediction_type=prediction_type)
        sched._step_index = 3
        expected = sched.step(out, t, sample).pred_original_sample
        torch.testing.assert_close(_denoise(scaling, sample, sigma, out), expected)


def test_edm_scaling_table1():
    sd = 0.5
    sigma = torch.tensor([0.1, 2.0])
    c_skip, c_out, c_in, c_noise = EDMScaling(sigma_data=sd)(sigma)
    for i, s in enumerate(sigma.tolist()):
        assert math.isclose(c_skip[i], sd**2 / (s**2 + sd**2), rel_tol=1e-6)
        assert math.isclose(c_out[i], s * sd / math.sqrt(s**2 + sd**2), rel_tol=1e-6)
        assert math.isclose(c_in[i], 1 / math.sqrt(s**2 + sd**2), rel_tol=1e-6)
        assert math.isclose(c_noise[i], math.log(s) / 4, rel_tol=1e-6)


def test_loss_weightings():
    sigma = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(UnitWeighting()(sigma), torch.ones(2))
    torch.testing.assert_close(EpsWeighting()(sigma), torch.tensor([4.0, 0.25]))
    torch.testing.assert_close(VWeighting()(sigma), torch.tensor([(0.25 + 1) / 0.25, 5 / 4]))
    # EDM weight is 1 / c_out^2
    c_out = EDMScaling(0.5)(sigma)[1]
    torch.testing.assert_close(EDMWeighting(0.5)(sigma), c_out**-2)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMWeighting(0.0)


def test_edm_scaling_matches_diffusers_edm_euler():
    from diffusers import EDMEulerScheduler

    sched = EDMEulerScheduler(sigma_data=0.5, prediction_type="epsilon")
    g = torch.Generator().manual_seed(2)
    sample, out = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    sigma = torch.tensor(3.7)
    c_skip, c_out, c_in, c_noise = EDMScaling(0.5)(sigma)
    torch.testing.assert_close(sched.precondition_inputs(sample, sigma), sample * c_in)
    torch.testing.assert_close(sched.precondition_noise(sigma).reshape(()), c_noise)
    torch.testing.assert_close(sched.precondition_outputs(sample, out, sigma), c_skip * sample + c_out * out)
