"""Rectified flow: the schedule, the noising, the velocity scaling and Euler sampling against diffusers'
FlowMatchEulerDiscreteScheduler (SD3's static shift, Flux's resolution-dependent shift)."""

import numpy as np
import pytest
import torch

from unlearn.diffusion.denoiser import Denoiser
from unlearn.diffusion.discretization import FlowMatchDiscretization, LegacyDDPMDiscretization, calculate_shift
from unlearn.diffusion.guiders import VanillaCFG
from unlearn.diffusion.samplers import DDIMSampler, EulerSampler

SD3 = {"shift": 3.0}
FLUX = {"use_dynamic_shifting": True, "image_seq_len": 1024, "schedule": "linear"}


def diffusers_scheduler(params, n):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if params.get("use_dynamic_shifting"):
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
        mu = calculate_shift(params["image_seq_len"], 256, 4096, 0.5, 1.15)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)  # what FluxPipeline passes
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=params["shift"])
        scheduler.set_timesteps(n)  # what StableDiffusion3Pipeline does
    return scheduler


@pytest.mark.parametrize("params", [SD3, FLUX], ids=["sd3", "flux"])
@pytest.mark.parametrize("n", [4, 28])
def test_sigmas_equal_the_pipelines(params, n):
    ours = FlowMatchDiscretization(**params)(n)  # (n + 1,)
    assert torch.equal(ours, diffusers_scheduler(params, n).sigmas)
    assert ours[0] == 1.0 and ours[-1] == 0.0 and bool((ours[:-1] > ours[1:]).all())


def test_flux_shift_grows_with_the_image():
    small = FlowMatchDiscretization(use_dynamic_shifting=True, image_seq_len=256, schedule="linear")(8)
    large = FlowMatchDiscretization(use_dynamic_shifting=True, image_seq_len=4096, schedule="linear")(8)
    assert bool((large[1:-1] > small[1:-1]).all())  # more tokens: more time at high noise
    assert calculate_shift(256) == pytest.approx(0.5) and calculate_shift(4096) == pytest.approx(1.15)


def test_noising_prior_and_velocity():
    flow, ve = FlowMatchDiscretization(**SD3), LegacyDDPMDiscretization()
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([0.25, 1.0])
    x = flow.add_noise(x0, eps, sigma)
    assert torch.allclose(x[0], 0.75 * x0[0] + 0.25 * eps[0]) and torch.equal(x[1], eps[1])
    assert torch.equal(ve.add_noise(x0, eps, sigma), x0 + sigma.view(-1, 1, 1, 1) * eps)
    assert flow.prior_scale(torch.tensor(1.0)) == 1.0 and ve.prior_scale(torch.tensor(3.0)) == pytest.approx(10**0.5)
    # a network that predicts the true velocity eps - x0 gives x0 back exactly
    denoiser = Denoiser({"target": "unlearn.diffusion.scalings.FlowScaling"})
    seen = []

    def oracle(x_in, timestep, cond):
        seen.append(timestep)
        return eps - x0

    assert torch.allclose(denoiser(oracle, x, sigma, {}), x0, atol=1e-6)
    assert torch.allclose(seen[0], torch.tensor([250.0, 1000.0]))  # the network's timestep: 1000 sigma
    assert torch.allclose(denoiser.predict_eps(oracle, x, sigma, {}), eps - x0, atol=1e-5)  # (x - D) / sigma = v


def _velocity_net(x, t, cond):
    """A smooth stand-in for a transformer: depends on x, the timestep and the prompt."""
    scale = cond["crossattn"].mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return torch.tanh(x * (1 + t.view(-1, 1, 1, 1) / 1000)) * scale + 0.1 * x


@pytest.mark.parametrize("params", [SD3, FLUX], ids=["sd3", "flux"])
@pytest.mark.parametrize("sampler_class", [EulerSampler, DDIMSampler], ids=["euler", "ddim"])
def test_euler_with_cfg_equals_diffusers_flow_match_euler(params, sampler_class):
    """Deterministic DDIM on a rectified flow is the same Euler step, so both match the scheduler."""
    n, scale = 6, 4.0
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    cond = {"crossattn": torch.randn(2, 3, 5, generator=g) + 1}
    uc = {"crossattn": torch.randn(2, 3, 5, generator=g)}
    sampler = sampler_class(
        {"target": "unlearn.diffusion.discretization.FlowMatchDiscretization", "params": params},
        num_steps=n,
        guider_config={"target": "unlearn.diffusion.guiders.VanillaCFG", "params": {"scale": scale}},
    )
    assert isinstance(sampler.guider, VanillaCFG)
    denoiser = Denoiser({"target": "unlearn.diffusion.scalings.FlowScaling"})
    ours = sampler(lambda x, s, c: denoiser(_velocity_net, x, s, c), noise, cond, uc)

    scheduler = diffusers_scheduler(params, n)  # the pipelines' loop: CFG on the velocity
    x = noise.clone()
    for t in scheduler.timesteps:
        tt = t.expand(2)
        v_u, v_c = _velocity_net(x, tt, uc), _velocity_net(x, tt, cond)
        x = scheduler.step(v_u + scale * (v_c - v_u), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-5), (ours - x).abs().max()


@pytest.mark.parametrize(
    "target", ["DDIMSampler", "DPMPP2MSampler", "EulerAncestralSampler"], ids=["ddim", "dpmpp_2m", "euler_a"]
)
def test_variance_exploding_samplers_refuse_rectified_flow(target):
    from unlearn.config import instantiate_from_config

    flow = {"target": "unlearn.diffusion.discretization.FlowMatchDiscretization", "params": SD3}
    stochastic = {"eta": 1.0} if target == "DDIMSampler" else {}  # DDIM at eta 0 is the flow's Euler step
    with pytest.raises(ValueError, match=f"{target} steps x = x0 \\+ sigma eps, not the rectified flow"):
        instantiate_from_config(
            {"target": f"unlearn.diffusion.samplers.{target}", "params": {"discretization_config": flow, **stochastic}}
        )
    with pytest.raises(ValueError, match="s_churn: churn adds variance-exploding noise"):
        EulerSampler(flow, num_steps=4, s_churn=1.0)
    ddpm = {"target": "unlearn.diffusion.discretization.LegacyDDPMDiscretization"}
    instantiate_from_config(
        {"target": f"unlearn.diffusion.samplers.{target}", "params": {"discretization_config": ddpm}}
    )


@pytest.mark.parametrize("sampler", ["EulerSampler", "HeunSampler"])
def test_euler_and_heun_follow_a_straight_flow_exactly(sampler):
    """With the oracle velocity of one (x0, eps) pair the flow is a straight line: both land on x0."""
    from unlearn.diffusion import samplers

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    run = getattr(samplers, sampler)(
        {"target": "unlearn.diffusion.discretization.FlowMatchDiscretization", "params": SD3}, num_steps=5
    )
    denoiser = Denoiser({"target": "unlearn.diffusion.scalings.FlowScaling"})
    out = run(lambda x, s, c: denoiser(lambda x_in, t, cc: eps - x0, x, s, c), eps, {})
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_the_engine_fills_the_image_token_count_of_a_dynamic_shift():
    from unlearn.engine.generation import sampler_config

    flux = {
        "target": "unlearn.diffusion.discretization.FlowMatchDiscretization",
        "params": {**FLUX, "image_seq_len": None},
    }
    base = {"target": "unlearn.diffusion.samplers.EulerSampler", "params": {"discretization_config": flux}}
    cfg = sampler_config(base, image_seq_len=256)
    assert cfg["params"]["discretization_config"]["params"]["image_seq_len"] == 256
    assert flux["params"]["image_seq_len"] is None  # the model's config is not changed
    sampler = EulerSampler(cfg["params"]["discretization_config"], num_steps=4)
    expected = FlowMatchDiscretization(**{**FLUX, "image_seq_len": 256})(4)
    assert torch.equal(sampler.get_sigmas(), expected)
    given = {**flux, "params": {**FLUX}}  # a count set in the config is kept
    assert (
        sampler_config({**base, "params": {"discretization_config": given}}, image_seq_len=256)["params"][
            "discretization_config"
        ]["params"]["image_seq_len"]
        == FLUX["image_seq_len"]
    )
    sd3 = {"target": "unlearn.diffusion.discretization.FlowMatchDiscretization", "params": SD3}
    assert (
        "image_seq_len" not in sampler_config(None, sd3, image_seq_len=256)["params"]["discretization_config"]["params"]
    )
    with pytest.raises(ValueError, match="image_seq_len: dynamic shifting needs the image's token count"):
        EulerSampler(flux, num_steps=4)


@pytest.mark.parametrize("n", [3, 10])
def test_heun_equals_diffusers_flow_match_heun(n):
    """Heun on SD3's shifted flow is FlowMatchHeunDiscreteScheduler's loop (its last step to sigma 0 is Euler)."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    from unlearn.diffusion.samplers import HeunSampler

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    cond = {"crossattn": torch.randn(2, 3, 5, generator=g) + 1}
    sampler = HeunSampler(
        {"target": "unlearn.diffusion.discretization.FlowMatchDiscretization", "params": SD3}, num_steps=n
    )
    denoiser = Denoiser({"target": "unlearn.diffusion.scalings.FlowScaling"})
    ours = sampler(lambda x, s, c: denoiser(_velocity_net, x, s, c), noise, cond)

    scheduler = FlowMatchHeunDiscreteScheduler(shift=SD3["shift"])
    scheduler.set_timesteps(n)
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(_velocity_net(x, t.expand(2), cond), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-5), (ours - x).abs().max()
