"""Schedules equal diffusers' schedulers' sigmas and timesteps."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from unlearn.diffusion.discretization import EDMDiscretization, LegacyDDPMDiscretization

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _euler(spacing, offset):
    sched = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=offset)
    return sched


@pytest.mark.parametrize("n", [1, 7, 10, 25, 50])
@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("leading", 1), ("linspace", 0)])
def test_legacy_ddpm_matches_euler_scheduler(spacing, offset, n):
    disc = LegacyDDPMDiscretization(timestep_spacing=spacing, steps_offset=offset)
    sched = _euler(spacing, offset)
    sched.set_timesteps(n)
    sigmas = disc(n)
    assert sigmas.shape == (n + 1,) and sigmas[-1] == 0
    np.testing.assert_allclose(sigmas.numpy(), sched.sigmas.numpy(), rtol=1e-5, atol=0)
    np.testing.assert_allclose(disc.timesteps(n).numpy(), sched.timesteps.numpy(), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize(
    "spacing,offset,n",
    # DDIM rounds fractional linspace timesteps, so linspace only where 999 / (n - 1) is whole.
    [("trailing", 0, 10), ("trailing", 0, 50), ("leading", 1, 10), ("leading", 1, 50), ("linspace", 0, 10)],
)
def test_legacy_ddpm_timesteps_match_ddim(spacing, offset, n):
    sched = DDIMScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(n)
    disc = LegacyDDPMDiscretization(timestep_spacing=spacing, steps_offset=offset)
    np.testing.assert_array_equal(disc.timesteps(n).numpy(), sched.timesteps.numpy().astype(np.float64))
    expected = ((1 - sched.alphas_cumprod[sched.timesteps]) / sched.alphas_cumprod[sched.timesteps]) ** 0.5
    np.testing.assert_allclose(disc(n, do_append_zero=False).numpy(), expected.numpy(), rtol=1e-5)


def test_alphas_cumprod_and_full_grid():
    disc = LegacyDDPMDiscretization()
    sched = _euler("trailing", 0)
    assert disc.alphas_cumprod.dtype == torch.float64 and disc.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(disc.alphas_cumprod.numpy(), sched.alphas_cumprod.numpy(), rtol=1e-5)
    full = disc(1000, do_append_zero=False, flip=True)  # ascending: index == timestep
    np.testing.assert_allclose(full.numpy(), disc.sigmas_full.numpy(), rtol=1e-6)
    assert torch.all(full[1:] > full[:-1])
    np.testing.assert_allclose(float(disc.sigmas_full[-1]), 14.6146, rtol=1e-4)


def test_linear_betas_match():
    disc = LegacyDDPMDiscretization(linear_start=1e-4, linear_end=0.02, beta_schedule="linear")
    sched = EulerDiscreteScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", timestep_spacing="trailing")
    sched.set_timesteps(10)
    np.testing.assert_allclose(disc(10).numpy(), sched.sigmas.numpy(), rtol=1e-5)


def test_zero_snr_rescale_matches():
    disc = LegacyDDPMDiscretization(rescale_betas_zero_snr=True)
    sched = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing", rescale_betas_zero_snr=True)
    sched.set_timesteps(10)
    np.testing.assert_allclose(disc(10).numpy(), sched.sigmas.numpy(), rtol=1e-4)
    assert disc(10)[0] > 4000


def test_sigma_t_round_trip_and_interpolation():
    disc = LegacyDDPMDiscretization()
    t = torch.tensor([0.0, 1.0, 99.0, 500.0, 999.0], dtype=torch.float64)
    torch.testing.assert_close(disc.sigma_to_t(disc.t_to_sigma(t)), t)
    # fractional t: linear in sigma, as numpy.interp in diffusers
    mid = disc.t_to_sigma(torch.tensor(10.25, dtype=torch.float64))
    expected = np.interp(10.25, np.arange(1000), disc.sigmas_full.numpy())
    assert abs(float(mid) - expected) < 1e-12
    # sigma_to_t is monotone and clamps outside the grid
    assert float(disc.sigma_to_t(torch.tensor(1e-4))) == 0.0
    assert float(disc.sigma_to_t(torch.tensor(100.0))) == 999.0


def test_edm_discretization():
    disc = EDMDiscretization(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    sigmas = disc(5, flip=False)
    ramp = np.linspace(0, 1, 5)
    expected = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas[:-1].numpy(), expected, rtol=1e-6)
    assert sigmas[-1] == 0 and torch.equal(disc(5, flip=True), sigmas.flip(0))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(timestep_spacing="even"), "timestep_spacing"),
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(num_timesteps=1), "num_timesteps"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LegacyDDPMDiscretization(**kwargs)


def test_bad_step_count():
    with pytest.raises(ValueError, match="n"):
        LegacyDDPMDiscretization()(0)
    with pytest.raises(ValueError, match="n"):
        LegacyDDPMDiscretization().timesteps(1001)
