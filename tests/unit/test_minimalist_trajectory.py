"""Step-wise checkpointed trajectory gradients equal plain backprop, in flat memory."""

import weakref
from functools import partial

import pytest
import torch

from tests.unit.mask_helpers import randomize, tiny_inputs, tiny_network  # noqa: F401
from unlearn.diffusion.denoiser import DiscreteDenoiser
from unlearn.diffusion.samplers import EulerAncestralSampler, EulerSampler
from unlearn.engine.trajectory_checkpoint import checkpointed_trajectory_backward, run_trajectory
from unlearn.hooks import MaskManager

pytestmark = pytest.mark.usefixtures("one_thread")

DISC = {"target": "unlearn.diffusion.discretization.LegacyDDPMDiscretization"}
CFG = {"target": "unlearn.diffusion.guiders.VanillaCFG", "params": {"scale": 2.0}}


def _setup(dtype, sampler_cls=EulerAncestralSampler, strategy="hard_discrete", noise_std=0.1):
    net = tiny_network().to(dtype)
    denoiser = DiscreteDenoiser({"target": "unlearn.diffusion.scalings.EpsScaling"}, 1000, DISC)
    sampler = sampler_cls(DISC, guider_config=CFG)
    manager = MaskManager.from_configs(
        [
            {"target": "unlearn.hooks.LinearHooker", "params": {"module_regex": "transformer_blocks"}},
            {"target": "unlearn.hooks.AttentionHeadHooker"},
        ],
        strategy=strategy,
        masked_noise_std=noise_std,
    ).register(net)
    randomize(manager, seed=5, scale=1.5)
    manager.train()
    x, _, cond = tiny_inputs(dtype=dtype)
    uc = {"crossattn": torch.zeros_like(cond["crossattn"])}
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=dtype)

    def make_step(sigmas, seeds):
        def step(i, x_i):
            # As MaskErasureEngine.trajectory_step: every random draw of step i from seeds[i].
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seeds[i])
                manager.resample(torch.Generator().manual_seed(seeds[i]))
                return sampler.step(partial(denoiser, net), x_i, i, sigmas, cond, uc, {})

        return step

    def loss_fn(x_final):
        return ((x_final - target) ** 2).mean()

    return manager, sampler, make_step, x, loss_fn


def _grads(manager):
    out = {k: lam.grad.clone() for k, lam in manager.masks().items()}
    for lam in manager.masks().values():
        lam.grad = None
    return out


def test_checkpointed_gradient_equals_backprop_through_the_whole_trajectory():
    manager, sampler, make_step, x, loss_fn = _setup(torch.float64)
    n = 4
    sigmas = sampler.get_sigmas(n).to(torch.float64)
    step = make_step(sigmas, seeds=[11, 22, 33, 44])
    x0 = x * torch.sqrt(1 + sigmas[0] ** 2)

    x_n = x0
    for i in range(n):
        x_n = step(i, x_n)
    plain_loss = loss_fn(x_n)
    plain_loss.backward()
    plain = _grads(manager)

    loss, _, x_final = checkpointed_trajectory_backward(step, x0, n, loss_fn)
    ckpt = _grads(manager)

    assert torch.equal(x_final, x_n.detach())  # same mask samples and noise in both passes
    assert float(loss) == float(plain_loss.detach())
    diff = max(float((plain[k] - ckpt[k]).abs().max()) for k in plain)
    scale = max(float(g.abs().max()) for g in plain.values())
    assert scale > 1e-4  # the gradients are not trivially zero
    assert diff < 1e-5, diff
    assert diff / scale < 1e-10  # float64: equal up to summation order


def _peak_saved_tensors(fn) -> int:
    """Most autograd-saved tensors alive at any one time while ``fn`` runs."""
    alive, peak = [0], [0]

    class Holder:
        def __init__(self, t):
            self.t = t

    def dec():
        alive[0] -= 1

    def pack(t):
        h = Holder(t)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(h, dec)
        return h

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        fn()
    return peak[0]


@pytest.mark.parametrize("checkpointed", [True, False])
def test_memory_does_not_grow_with_the_number_of_steps(checkpointed):
    manager, sampler, make_step, x, loss_fn = _setup(
        torch.float32, sampler_cls=EulerSampler, strategy="sigmoid", noise_std=0.0
    )
    peaks = {}
    for n in (2, 5):
        sigmas = sampler.get_sigmas(n)
        step = make_step(sigmas, seeds=list(range(n)))

        def run(step=step, n=n):
            if checkpointed:
                checkpointed_trajectory_backward(step, x, n, loss_fn)
            else:
                x_n = x
                for i in range(n):
                    x_n = step(i, x_n)
                loss_fn(x_n).backward()

        peaks[n] = _peak_saved_tensors(run)
        _grads(manager)
    if checkpointed:
        assert peaks[2] == peaks[5]  # one step's graph at a time
    else:
        assert peaks[5] > 2 * peaks[2]  # backprop keeps every step's graph


def test_run_trajectory_keeps_every_latent_without_a_graph():
    manager, sampler, make_step, x, _ = _setup(torch.float32, sampler_cls=EulerSampler)
    xs = run_trajectory(make_step(sampler.get_sigmas(3), seeds=[1, 2, 3]), x, 3)
    assert len(xs) == 4 and not any(t.requires_grad for t in xs)
    with pytest.raises(ValueError, match="num_steps"):
        run_trajectory(lambda i, t: t, x, 0)
