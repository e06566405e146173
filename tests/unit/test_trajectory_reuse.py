"""Reusing each frozen trajectory at several steps (TrajectoryPool(reuse=r)): the same x_t as a
single-trajectory run, every step uniform and distinct, and reuse 1 exactly the reference."""

import pytest
import torch

from tests.unit.esd_helpers import make_engine
from unlearn.config import ConfigError
from unlearn.engine.trajectories import TrajectoryPool, run_to_stops, sample_at_steps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine():
    return make_engine(ddim_steps=6, pool_size=4)


def _legacy_sample_to_steps(sampler, denoiser, noise, stop, sigmas, cond, uc, generator):
    """The one-stop-per-trajectory loop as it was before ``reuse`` (a copy, to pin its output)."""
    from unlearn.diffusion.samplers import default_noise_sampler

    order = torch.argsort(stop.cpu(), descending=True, stable=True)
    stop_sorted = stop.cpu()[order]
    x = noise[order] * torch.sqrt(1.0 + sigmas[0] ** 2)
    cond = {k: v[order] for k, v in cond.items()}
    uc = {k: v[order] for k, v in uc.items()}
    out, state, running = torch.empty_like(x), {}, x.shape[0]
    noise_sampler = default_noise_sampler(generator)
    for i in range(int(stop_sorted[0]) + 1):
        keep = int((stop_sorted > i).sum())
        out[keep:running] = x[keep:]
        if keep == 0:
            break
        if keep < running:
            x, running = x[:keep], keep
            cond = {k: v[:keep] for k, v in cond.items()}
            uc = {k: v[:keep] for k, v in uc.items()}
        x = sampler.step(denoiser, x, i, sigmas, cond, uc, state, noise_sampler=noise_sampler)
    result = torch.empty_like(out)
    result[order] = out
    return result


def _pool(engine, reuse, seed=3, step_range=None):
    sampler = engine.pool.sampler
    return TrajectoryPool(sampler, len(engine.prompts), seed=seed, pool_size=4, step_range=step_range, reuse=reuse)


def _fill(engine, pool):
    pool.refill(engine.teacher_denoise, engine._sampler_conds, engine.train_latent_shape)


def test_reuse_1_reproduces_the_reference_draws_and_samples_exactly(engine):
    pool = _pool(engine, reuse=1)
    _fill(engine, pool)
    g = torch.Generator().manual_seed(3)  # the reference's draws, in its order
    prompts = torch.randint(len(engine.prompts), (4,), generator=g)
    steps = torch.randint(0, 6, (4,), generator=g)
    noise = torch.randn((4, *engine.train_latent_shape), generator=g)
    cond, uc = engine._sampler_conds(prompts)
    sigmas = pool.sampler.get_sigmas(6)
    x = _legacy_sample_to_steps(pool.sampler, engine.teacher_denoise, noise, steps, sigmas, cond, uc, g)
    assert torch.equal(pool.prompts, prompts) and torch.equal(pool.steps, steps) and torch.equal(pool.noise, noise)
    assert torch.equal(pool.x, x)  # bit for bit: the batches at every step are the same
    assert pool.capacity == 4


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_each_recorded_step_equals_a_single_trajectory_run(engine, sampler):
    s = engine.make_sampler(sampler, 6, 3.0)
    sigmas = s.get_sigmas(6)
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    stops = torch.tensor([[0, 2, 5], [1, 3, 4], [0, 1, 2]])
    cond, uc = engine._sampler_conds(torch.tensor([0, 0, 0]))
    x = sample_at_steps(s, engine.teacher_denoise, noise, stops, sigmas, cond, uc)  # (3, 3, C, H, W)
    assert x.shape == (3, 3, 3, 16, 16)
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in cond.items()}, {k: v[i : i + 1] for k, v in uc.items()}
        for k in range(3):
            alone = s(engine.teacher_denoise, noise[i : i + 1], *one, sigmas=sigmas, end_step=int(stops[i, k]))
            assert torch.allclose(x[i, k : k + 1], alone, rtol=1e-4, atol=1e-4)


def test_reuse_serves_every_trajectory_at_distinct_uniform_steps(engine):
    pool = _pool(engine, reuse=3, step_range=[1, 5])
    _fill(engine, pool)
    assert pool.capacity == 12 and pool.x.shape[0] == 12 and pool.remaining == 12
    by_trajectory: dict[bytes, list[int]] = {}
    for noise, step in zip(pool.noise, pool.steps.tolist()):
        by_trajectory.setdefault(noise.numpy().tobytes(), []).append(step)
    assert len(by_trajectory) == 4  # four trajectories, three samples each, at three distinct steps
    assert all(len(s) == 3 == len(set(s)) and set(s) <= {1, 2, 3, 4} for s in by_trajectory.values())
    assert pool.steps.tolist() != sorted(pool.steps.tolist())  # shuffled, not trajectory by trajectory
    taken = [pool.take(1, engine.teacher_denoise, engine._sampler_conds, engine.train_latent_shape) for _ in range(12)]
    assert pool.refills == 1 and pool.remaining == 0
    assert all(torch.equal(t.x[0], pool.x[i]) for i, t in enumerate(taken))
    # the sample at a trajectory's step is what that trajectory alone gives there
    sigmas = pool.sampler.get_sigmas(6)
    cond, uc = engine._sampler_conds(pool.prompts[:1])
    alone = pool.sampler(engine.teacher_denoise, pool.noise[:1], cond, uc, sigmas=sigmas, end_step=int(pool.steps[0]))
    assert torch.allclose(alone, pool.x[:1], rtol=1e-4, atol=1e-4)


def test_steps_stay_uniform_under_reuse(engine):
    """Over many refills each step of the range is drawn equally often (within sampling noise)."""
    pool = _pool(engine, reuse=2)
    g = pool.generator
    counts = torch.zeros(6)
    for _ in range(500):
        steps = torch.rand(4, 6, generator=g).argsort(dim=1)[:, :2]
        counts += torch.bincount(steps.flatten(), minlength=6)
    share = counts / counts.sum()
    assert torch.allclose(share, torch.full((6,), 1 / 6), atol=0.02)


def test_bad_reuse_names_its_key():
    with pytest.raises(
        ConfigError, match=r"model\.params\.trajectory_config\.params\.reuse: expected an integer in \[1, 2\]"
    ):
        make_engine(ddim_steps=6, step_range=[2, 4], reuse=3)
    with pytest.raises(ConfigError, match=r"model\.params\.batch_size: expected an integer in \[1, 8\]"):
        make_engine(ddim_steps=6, pool_size=4, reuse=2, batch_size=9)
    engine = make_engine(ddim_steps=6, pool_size=4, reuse=2, batch_size=8)
    assert engine.pool.capacity == 8 and engine.erasure_batch()[0].x.shape[0] == 8


# ------------------------------------------------------------------------ recorded predictions
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun"])
def test_recorded_predictions_are_the_frozen_models_at_each_recorded_x(engine, sampler):
    s = engine.make_sampler(sampler, 6, 3.0)
    sigmas = s.get_sigmas(6)
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    stops = torch.tensor([[0, 2, 5], [1, 3, 4], [0, 1, 2]])
    cond, uc = engine._sampler_conds(torch.tensor([0, 0, 0]))
    plain = sample_at_steps(s, engine.teacher_denoise, noise, stops, sigmas, cond, uc)
    x, denoised = run_to_stops(s, engine.teacher_denoise, noise, stops, sigmas, cond, uc, record=True)
    assert torch.allclose(x, plain, rtol=1e-5, atol=1e-5)  # recording leaves the trajectories as they are
    assert set(denoised) == {"uc", "cond"} and denoised["cond"].shape == x.shape
    for i in range(3):
        for k in range(3):
            xi, si = x[i, k : k + 1], sigmas[stops[i, k]].expand(1)
            c = {key: v[i : i + 1] for key, v in cond.items()}
            u = {key: v[i : i + 1] for key, v in uc.items()}
            for branch, branch_cond in (("cond", c), ("uc", u)):
                alone = engine.teacher_denoise(xi, si, branch_cond)
                assert torch.allclose(denoised[branch][i, k : k + 1], alone, rtol=1e-4, atol=1e-4)


def test_a_sampler_that_steps_from_another_point_is_refused(engine):
    churn = engine.make_sampler("euler", 6, 3.0)
    churn.s_churn = 40.0  # Euler with churn evaluates the model at a noisier x_hat, not at x_t
    cond, uc = engine._sampler_conds(torch.tensor([0, 0]))
    noise, stops = torch.randn(2, 3, 16, 16), torch.tensor([[1, 3], [2, 4]])
    with pytest.raises(ValueError, match=r"EulerSampler: its step does not first evaluate the denoiser at the step"):
        run_to_stops(churn, engine.teacher_denoise, noise, stops, churn.get_sigmas(6), cond, uc, record=True)


def test_reuse_records_predictions_by_default_and_reuse_1_does_not(engine):
    assert not _pool(engine, reuse=1).record_predictions
    assert _pool(engine, reuse=2).record_predictions
    off = TrajectoryPool(engine.pool.sampler, 2, reuse=2, record_predictions=False)
    assert not off.record_predictions
    with pytest.raises(ValueError, match=r"record_predictions: expected true, false or null, got 'yes'"):
        TrajectoryPool(engine.pool.sampler, 2, record_predictions="yes")


def test_the_loss_uses_the_recorded_teacher_predictions_in_place_of_its_own_calls():
    reused = make_engine(ddim_steps=6, pool_size=4, reuse=3, batch_size=2)
    batch, _ = reused.erasure_batch()
    assert set(batch.teacher_eps) == {"null", "concept"}
    for role in ("null", "concept"):
        cond = batch.null if role == "null" else batch.concept
        alone = reused.teacher_eps(batch.x, batch.sigma, cond)
        assert torch.allclose(batch.teacher_eps[role], alone, rtol=1e-4, atol=1e-5)
    calls = []

    def counted_teacher(x, sigma, cond):
        calls.append(x.shape[0])
        return reused.teacher_eps(x, sigma, cond)

    with_known = reused.objective(reused.student_eps, counted_teacher, batch).loss
    assert calls == []  # nothing left to ask the teacher
    batch.teacher_eps = None
    computed = reused.objective(reused.student_eps, counted_teacher, batch).loss
    assert calls == [4]  # null and concept, two samples each, in one call
    assert torch.allclose(with_known, computed, rtol=1e-4)


def test_recorded_predictions_map_to_erase_from_and_preserve_roles():
    engine = make_engine(
        ddim_steps=6, pool_size=4, reuse=2, erase_from="a circle", preserve="dotted", preserve_source="own"
    )
    batch, _ = engine.erasure_batch()
    assert set(batch.teacher_eps) == {"null", "erase_from", "preserve_null", "preserve"}
    alone = engine.teacher_eps(batch.preserve_x, batch.preserve_sigma, batch.preserve)
    assert torch.allclose(batch.teacher_eps["preserve"], alone, rtol=1e-4, atol=1e-5)
    alone = engine.teacher_eps(batch.x, batch.sigma, batch.erase_from)
    assert torch.allclose(batch.teacher_eps["erase_from"], alone, rtol=1e-4, atol=1e-5)
