"""Mask strategies: value ranges, gradients, hard-concrete facts (Louizos et al. 2018)."""

import math

import pytest
import torch

from unlearn.hooks.strategies import (
    ContinuousToBinaryMask,
    HardConcreteMask,
    SigmoidMask,
    StraightThroughBinaryMask,
    build_strategy,
    hard_concrete_prob_nonzero,
)


def _lam(n=64, seed=0):
    return (3 * torch.randn(n, generator=torch.Generator().manual_seed(seed))).requires_grad_(True)


@pytest.mark.parametrize("strategy", [SigmoidMask(), ContinuousToBinaryMask()])
def test_sigmoid_mask_values_and_gradient(strategy):
    lam = _lam()
    m = strategy.sample(lam, None)
    assert torch.allclose(m, torch.sigmoid(lam))
    assert 0 < m.min() and m.max() < 1
    m.sum().backward()
    s = torch.sigmoid(lam.detach())
    assert torch.allclose(lam.grad, s * (1 - s))
    assert torch.equal(strategy.deterministic(lam), strategy.sample(lam, None))
    assert strategy.requires_binarization is isinstance(strategy, ContinuousToBinaryMask)


def test_binary_is_exact_threshold_with_sigmoid_gradient():
    lam = _lam()
    m = StraightThroughBinaryMask().sample(lam, None)
    assert torch.equal(m.detach(), (lam.detach() > 0).float())  # exactly 0/1, no rounding residue
    m.sum().backward()
    s = torch.sigmoid(lam.detach())
    assert torch.allclose(lam.grad, s * (1 - s))
    # a budget lowers the threshold: only λ <= τ are off
    capped = StraightThroughBinaryMask(threshold=-1.0)
    assert torch.equal(capped.deterministic(lam.detach()), (lam.detach() > -1.0).float())
    with pytest.raises(ValueError, match="threshold: must be <= 0"):
        build_strategy({"target": "unlearn.hooks.strategies.StraightThroughBinaryMask", "params": {"threshold": 0.5}})


def test_hard_concrete_range_exact_zeros_ones_and_determinism():
    hc = HardConcreteMask()
    lam = _lam(4096)
    u = torch.rand(4096, generator=torch.Generator().manual_seed(1)) * (1 - 2e-6) + 1e-6
    z = hc.sample(lam, u)
    assert z.min() >= 0 and z.max() <= 1
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    assert torch.equal(z, hc.sample(lam, u.clone()))  # a pure function of (λ, u)
    # Louizos et al. Eq. 10-11 by hand for one unit.
    i = int(((z > 0) & (z < 1)).nonzero()[0])
    s = 1 / (1 + math.exp(-(math.log(u[i]) - math.log(1 - u[i]) + float(lam[i].detach())) / (2 / 3)))
    assert float(z[i]) == pytest.approx(s * 1.2 - 0.1, rel=1e-5)
    # Gradient flows where the gate is inside (0, 1) and is zero where it is clamped.
    z.sum().backward()
    inside = (z > 0) & (z < 1)
    assert (lam.grad[inside] > 0).all() and (lam.grad[~inside] == 0).all()
    with pytest.raises(ValueError, match="resample"):
        hc.sample(lam, None)


def test_hard_concrete_deterministic_and_l0_expectation():
    hc = HardConcreteMask()
    lam = torch.tensor([-10.0, 0.0, 10.0])
    assert torch.allclose(hc.deterministic(lam), torch.tensor([0.0, 0.5, 1.0]))
    # P(z != 0) = σ(log α - β log(-γ/ζ)): 1/2 where log α = β log(-γ/ζ); matches Monte Carlo.
    at_half = torch.tensor([2 / 3 * math.log(0.1 / 1.1)])
    assert float(hard_concrete_prob_nonzero(at_half, 2 / 3, -0.1, 1.1)) == pytest.approx(0.5)
    lam = torch.full((200_000,), 0.7)
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(2)).clamp(1e-6, 1 - 1e-6)
    empirical_off = float((hc.sample(lam, u) == 0).float().mean())
    assert float(hc.off_probability(lam[:1])) == pytest.approx(empirical_off, abs=5e-3)


def test_build_strategy_from_name_and_target_block():
    assert isinstance(build_strategy("hard_discrete"), HardConcreteMask)
    hc = build_strategy({"target": "unlearn.hooks.strategies.HardConcreteMask", "params": {"beta": 0.5, "zeta": 1.2}})
    assert (hc.beta, hc.gamma, hc.zeta) == (0.5, -0.1, 1.2)
    with pytest.raises(ValueError, match="unknown mask strategy 'sigmoidal'"):
        build_strategy("sigmoidal")
    with pytest.raises(ValueError, match="gamma < 0 < 1 < zeta"):
        build_strategy({"target": "unlearn.hooks.strategies.HardConcreteMask", "params": {"zeta": 1.0}})
