"""Samplers against diffusers' schedulers on the same tiny seeded UNet.

Settings that make the two algorithms coincide (see each sampler's docstring):
Euler / Euler-ancestral / Heun <-> the same-named diffusers schedulers (any spacing; the
initial noise is scaled by sqrt(1 + sigma_max^2) on both sides, where diffusers'
init_noise_sigma would use sigma_max for trailing/linspace); DPM++(2M) <->
DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True); DDIM <->
DDIMScheduler(set_alpha_to_one=True). DDIM and DPM-Solver run in DDPM space with unit
initial noise; our final sample is at sigma 0, so both outputs are x0 and comparable.
"""

from functools import partial

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UNet2DConditionModel,
)

from unlearn.diffusion.denoiser import DiscreteDenoiser
from unlearn.diffusion.discretization import LegacyDDPMDiscretization
from unlearn.diffusion.guiders import VanillaCFG
from unlearn.diffusion.samplers import (
    DDIMSampler,
    DPMPP2MSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
)

N_STEPS = 10
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
EPS = {"target": "unlearn.diffusion.scalings.EpsScaling"}
V = {"target": "unlearn.diffusion.scalings.VScaling"}
DPM_KW = dict(algorithm_type="dpmsolver++", final_sigmas_type="zero")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    cond = {"crossattn": torch.randn(2, 6, 16, generator=g)}
    uc = {"crossattn": torch.randn(2, 6, 16, generator=g) * 0.1}
    return noise, cond, uc


def make_denoiser(unet, scaling=EPS, spacing="trailing", offset=0):
    disc = LegacyDDPMDiscretization(timestep_spacing=spacing, steps_offset=offset)
    den = DiscreteDenoiser(scaling, num_idx=1000, discretization_config=disc)
    network = lambda x, t, c: unet(x, t, encoder_hidden_states=c["crossattn"]).sample  # noqa: E731
    return partial(den, network), disc


def diffusers_sample(unet, scheduler, noise, cond, uc=None, scale=1.0, karras_init=True, generator=None, **step_kw):
    scheduler.set_timesteps(N_STEPS)
    latents = noise * (scheduler.sigmas[0] ** 2 + 1) ** 0.5 if karras_init else noise.clone()
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(latents, t)
        if uc is None:
            out = unet(inp, t, encoder_hidden_states=cond["crossattn"]).sample
        else:
            emb = torch.cat([uc["crossattn"], cond["crossattn"]])
            out_u, out_c = unet(torch.cat([inp, inp]), t, encoder_hidden_states=emb).sample.chunk(2)
            out = out_u + scale * (out_c - out_u)
        if generator is not None:
            step_kw["generator"] = generator
        latents = scheduler.step(out, t, latents, **step_kw).prev_sample
    return latents


def assert_close(ours, theirs):
    err = (ours - theirs).abs().max().item()
    assert err < 1e-4, f"max abs difference {err}"
    assert theirs.abs().max() > 0.1  # a non-trivial sample


CASES = {
    "euler": (EulerSampler, {}, EulerDiscreteScheduler, {}, True),
    "heun": (HeunSampler, {}, HeunDiscreteScheduler, {}, True),
    "dpmpp_2m": (
        DPMPP2MSampler,
        {},
        DPMSolverMultistepScheduler,
        dict(
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            final_sigmas_type="zero",
            lower_order_final=True,
        ),
        False,
    ),
    "ddim": (DDIMSampler, {}, DDIMScheduler, dict(set_alpha_to_one=True, clip_sample=False), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sampler_matches_diffusers(name, unet, inputs):
    sampler_cls, sampler_kw, sched_cls, sched_kw, karras_init = CASES[name]
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet)
    ours = sampler_cls(disc, num_steps=N_STEPS, **sampler_kw)(denoiser, noise, cond)
    sched = sched_cls(**SD_BETAS, timestep_spacing="trailing", **sched_kw)
    assert_close(ours, diffusers_sample(unet, sched, noise, cond, karras_init=karras_init))


def test_euler_ancestral_matches_diffusers_with_the_same_noise(unet, inputs):
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet)
    ours = EulerAncestralSampler(disc, num_steps=N_STEPS)(
        denoiser, noise, cond, generator=torch.Generator().manual_seed(7)
    )
    sched = EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing")
    theirs = diffusers_sample(unet, sched, noise, cond, generator=torch.Generator().manual_seed(7))
    assert_close(ours, theirs)
    other = EulerAncestralSampler(disc, num_steps=N_STEPS)(
        denoiser, noise, cond, generator=torch.Generator().manual_seed(8)
    )
    assert (other - ours).abs().max() > 1e-2  # the noise matters


def test_ddim_eta_one_matches_diffusers(unet, inputs):
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet)
    ours = DDIMSampler(disc, num_steps=N_STEPS, eta=1.0)(
        denoiser, noise, cond, generator=torch.Generator().manual_seed(5)
    )
    sched = DDIMScheduler(**SD_BETAS, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    theirs = diffusers_sample(
        unet, sched, noise, cond, karras_init=False, generator=torch.Generator().manual_seed(5), eta=1.0
    )
    assert_close(ours, theirs)


@pytest.mark.parametrize(
    "sampler_cls,sched_cls", [(EulerSampler, EulerDiscreteScheduler), (DDIMSampler, DDIMScheduler)]
)
def test_leading_spacing_sd15(sampler_cls, sched_cls, unet, inputs):
    """SD 1.5's scheduler config: timestep_spacing="leading", steps_offset=1."""
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet, spacing="leading", offset=1)
    ours = sampler_cls(disc, num_steps=N_STEPS)(denoiser, noise, cond)
    extra = dict(set_alpha_to_one=True, clip_sample=False) if sched_cls is DDIMScheduler else {}
    sched = sched_cls(**SD_BETAS, timestep_spacing="leading", steps_offset=1, **extra)
    assert_close(ours, diffusers_sample(unet, sched, noise, cond, karras_init=sched_cls is not DDIMScheduler))


@pytest.mark.parametrize(
    "sampler_cls,sched_cls", [(EulerSampler, EulerDiscreteScheduler), (DPMPP2MSampler, DPMSolverMultistepScheduler)]
)
def test_cfg_matches_manual_diffusers_loop(sampler_cls, sched_cls, unet, inputs):
    noise, cond, uc = inputs
    denoiser, disc = make_denoiser(unet)
    sampler = sampler_cls(disc, num_steps=N_STEPS, guider_config=VanillaCFG(scale=3.0))
    ours = sampler(denoiser, noise, cond, uc)
    kw = DPM_KW if sched_cls is DPMSolverMultistepScheduler else {}
    sched = sched_cls(**SD_BETAS, timestep_spacing="trailing", **kw)
    euler = sched_cls is EulerDiscreteScheduler
    theirs = diffusers_sample(unet, sched, noise, cond, uc, scale=3.0, karras_init=euler)
    assert_close(ours, theirs)
    unguided = sampler_cls(disc, num_steps=N_STEPS)(denoiser, noise, cond)
    assert (unguided - ours).abs().max() > 1e-2


@pytest.mark.parametrize(
    "sampler_cls,sched_cls", [(EulerSampler, EulerDiscreteScheduler), (DPMPP2MSampler, DPMSolverMultistepScheduler)]
)
def test_v_prediction(sampler_cls, sched_cls, unet, inputs):
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet, scaling=V)
    ours = sampler_cls(disc, num_steps=N_STEPS)(denoiser, noise, cond)
    kw = DPM_KW if sched_cls is DPMSolverMultistepScheduler else {}
    sched = sched_cls(**SD_BETAS, timestep_spacing="trailing", prediction_type="v_prediction", **kw)
    assert_close(ours, diffusers_sample(unet, sched, noise, cond, karras_init=sched_cls is EulerDiscreteScheduler))


@pytest.mark.parametrize("sampler_cls", [EulerSampler, EulerAncestralSampler, HeunSampler, DPMPP2MSampler, DDIMSampler])
def test_partial_runs_equal_a_full_run_and_inputs_are_untouched(sampler_cls, unet, inputs):
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet)
    sampler = sampler_cls(disc, num_steps=6)
    noise_copy, cond_copy = noise.clone(), {k: v.clone() for k, v in cond.items()}
    full = sampler(denoiser, noise, cond, generator=torch.Generator().manual_seed(2))
    g, state = torch.Generator().manual_seed(2), {}
    mid = sampler(denoiser, noise, cond, end_step=4, generator=g, state=state)
    mid_copy = mid.clone()
    rest = sampler(denoiser, mid, cond, start_step=4, generator=g, state=state)
    torch.testing.assert_close(rest, full, atol=1e-6, rtol=0)
    assert torch.equal(noise, noise_copy) and torch.equal(cond["crossattn"], cond_copy["crossattn"])
    assert torch.equal(mid, mid_copy)


def test_step_by_step_matches_call_and_callback(unet, inputs):
    """`step` alone (as gradient-checkpointing code uses it) reproduces the sampler loop."""
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet)
    sampler = DPMPP2MSampler(disc, num_steps=5)
    seen = []
    full = sampler(denoiser, noise, cond, callback=lambda info: seen.append(info["i"]))
    assert seen == [0, 1, 2, 3, 4]
    sigmas = sampler.get_sigmas(device=noise.device)
    x, state = noise * (1 + sigmas[0] ** 2) ** 0.5, {}
    for i in range(5):
        x = sampler.step(denoiser, x, i, sigmas, cond, None, state)
    torch.testing.assert_close(x, full, atol=0, rtol=0)
    torch.testing.assert_close(state["denoised"], full)


def test_euler_churn_uses_injected_noise(unet, inputs):
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet)
    sampler = EulerSampler(disc, num_steps=N_STEPS, s_churn=1.0)
    zero = lambda x, s, s_next: torch.zeros_like(x)  # noqa: E731
    churned_no_noise = sampler(denoiser, noise, cond, noise_sampler=zero)
    plain = EulerSampler(disc, num_steps=N_STEPS)(denoiser, noise, cond)
    # zero injected noise but a raised sigma_hat still changes the path, deterministically
    assert (churned_no_noise - plain).abs().max() > 1e-4
    torch.testing.assert_close(sampler(denoiser, noise, cond, noise_sampler=zero), churned_no_noise)


def test_bad_step_range_names_arguments(unet, inputs):
    noise, cond, _ = inputs
    denoiser, disc = make_denoiser(unet)
    with pytest.raises(ValueError, match="start_step"):
        EulerSampler(disc, num_steps=4)(denoiser, noise, cond, start_step=3, end_step=2)
    with pytest.raises(ValueError, match="num_steps"):
        EulerSampler(disc)(denoiser, noise, cond)
