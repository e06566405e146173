"""The few-step sampler of DMD2 students: schedule, re-noising, shapes and seeded determinism."""

from __future__ import annotations

import pytest
import torch

from unlearn.diffusion.discretization import LegacyDDPMDiscretization
from unlearn.diffusion.samplers import FewStepSampler
from unlearn.diffusion.samplers.few_step import per_sample_noise_sampler, uniform_timesteps

DISC = {"target": "unlearn.diffusion.discretization.LegacyDDPMDiscretization"}


def toy_denoiser(x, sigma, cond):
    # A deterministic "generator": x0 = tanh(x / sqrt(1 + sigma^2)) + the condition's offset.
    return torch.tanh(x / (1 + sigma[:, None, None, None] ** 2).sqrt()) + cond["offset"]


def test_schedule_is_the_conditioning_timesteps():
    assert uniform_timesteps(4) == [999, 749, 499, 249] and uniform_timesteps(1) == [999]
    s4 = FewStepSampler(DISC)
    disc = LegacyDDPMDiscretization()
    expected = disc.t_to_sigma(torch.tensor([999, 749, 499, 249])).float()
    assert torch.equal(s4.get_sigmas()[:-1], expected) and s4.get_sigmas()[-1] == 0
    assert FewStepSampler(DISC, timesteps=[999]).get_sigmas().shape == (2,)
    # num_steps other than the trained count: DMD2's uniform rule.
    assert FewStepSampler(DISC, num_steps=2).timesteps == [999, 499]
    assert s4.timesteps_for(1) == [999]
    for bad in ([], [249, 999], [999, 999], [1000], [999.5]):
        with pytest.raises(ValueError, match="timesteps"):
            FewStepSampler(DISC, timesteps=bad)


def test_one_step_is_one_generator_call_on_pure_noise():
    s1 = FewStepSampler(DISC, timesteps=[999])
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = {"offset": torch.zeros(2, 1, 1, 1)}
    out = s1(toy_denoiser, z, cond)
    sigma = s1.get_sigmas()[0]
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out, toy_denoiser(z * (1 + sigma**2).sqrt(), sigma.expand(2), cond))


def test_multi_step_renoises_the_last_x0_with_fresh_noise():
    s4 = FewStepSampler(DISC)
    sigmas = s4.get_sigmas()
    seen = []

    def recording(x, sigma, cond):
        seen.append((x.clone(), sigma.clone()))
        return toy_denoiser(x, sigma, cond)

    cond = {"offset": torch.full((1, 1, 1, 1), 0.25)}
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 3, 4, 4, generator=gen)
    out = s4(recording, z, cond, generator=torch.Generator().manual_seed(7))
    assert [float(s[0]) for _, s in seen] == pytest.approx(sigmas[:-1].tolist())
    replay = torch.Generator().manual_seed(7)
    for i in range(1, 4):
        x_prev, s_prev = seen[i - 1]
        x0 = toy_denoiser(x_prev, s_prev, cond)
        eps = torch.randn(x0.shape, generator=replay)
        assert torch.allclose(seen[i][0], x0 + sigmas[i] * eps)  # x_{t_i} = x̂_{i-1} + sigma_i eps
    assert torch.allclose(out, toy_denoiser(*seen[-1], cond))  # the output is the last x̂


def test_seeded_per_sample_noise_makes_samples_batch_independent():
    s4 = FewStepSampler(DISC)
    cond = {"offset": torch.zeros(1, 1, 1, 1)}

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        z = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
        return s4(toy_denoiser, z, cond, noise_sampler=per_sample_noise_sampler(gens))

    pair, alone, again = run([5, 6]), run([6]), run([5, 6])
    assert torch.equal(pair, again)
    assert torch.allclose(pair[1], alone[0])
    assert not torch.allclose(pair[0], pair[1])


def test_on_a_rectified_flow_it_renoises_as_the_flow_does():
    flow = {"target": "unlearn.diffusion.discretization.FlowMatchDiscretization", "params": {"shift": 3.0}}
    sampler = FewStepSampler(flow, [999, 499])
    sigmas = sampler.get_sigmas()
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.75, 0.0]))  # shift 3 of 1.0 and 0.5
    x0 = torch.full((1, 2, 4, 4), 0.3)
    eps = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    inputs = []

    def generator(x, sigma, cond):
        inputs.append(x)
        return x0

    sampler(generator, torch.randn(1, 2, 4, 4), {}, noise_sampler=lambda x, s, s_next: eps)
    torch.testing.assert_close(inputs[1], 0.25 * x0 + 0.75 * eps)  # (1 - sigma) x0 + sigma eps
