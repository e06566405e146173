"""Training-time noise-level distributions: ``sampler(n) -> sigmas (n,)``.

* `DiscreteSampling`: a DDPM timestep drawn uniformly from the training grid
  (Ho et al. 2020, Algorithm 1), returned as its sigma (and, on request, its index).
* `EDMSampling`: ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1, "Training").
* `LogitNormalSampling`, `UniformSampling`: rectified flow's sigma in [0, 1] (x = (1 - sigma) x0 +
  sigma eps), logit(sigma) ~ N(m, s^2) as SD3 trains (Esser et al. 2024, Sec. 3.1, Eq. 19), or
  uniform (Liu et al. 2023); both optionally shifted towards noise as SD3's schedule is
  (`shift_sigma`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

from .utils import build, randn

__all__ = [
    "SigmaSampler",
    "DiscreteSampling",
    "EDMSampling",
    "LogitNormalSampling",
    "UniformSampling",
    "shift_sigma",
]


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive number of samples, got {n!r}")


class SigmaSampler(ABC):
    """Contract: ``sampler(n, generator=None, device=None) -> sigmas (n,)``."""

    @abstractmethod
    def __call__(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draw n noise levels, shape (n,), float32, on ``device``."""


class DiscreteSampling(SigmaSampler):
    """Uniform index into ``discretization(num_idx, do_append_zero, flip)``.

    With ``flip=True`` (default) index i is DDPM timestep i, so ``return_idx=True`` gives
    the timesteps diffusers-style training code would have drawn.
    """

    def __init__(
        self, discretization_config: Mapping[str, Any], num_idx: int, do_append_zero: bool = False, flip: bool = True
    ):
        if not isinstance(num_idx, int) or num_idx < 1:
            raise ValueError(f"num_idx: expected a positive integer, got {num_idx!r}")
        self.discretization = build(discretization_config, "discretization_config")
        self.num_idx = num_idx
        self.sigmas = self.discretization(num_idx, do_append_zero=do_append_zero, flip=flip)  # (num_idx[+1],)

    def idx_to_sigma(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (n,) long -> sigmas (n,) on idx's device."""
        return self.sigmas.to(idx.device)[idx]

    def __call__(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        return_idx: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """sigmas (n,), or (sigmas, idx) with idx (n,) long when ``return_idx``."""
        _check_n(n)
        draw_device = generator.device if generator is not None else device
        idx = torch.randint(0, self.num_idx, (n,), generator=generator, device=draw_device).to(device)
        sigmas = self.idx_to_sigma(idx)
        return (sigmas, idx) if return_idx else sigmas


class EDMSampling(SigmaSampler):
    """sigma = exp(P_mean + P_std * z), z ~ N(0, 1) (Karras et al. 2022, Table 1)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if p_std <= 0:
            raise ValueError(f"p_std: expected a positive number, got {p_std}")
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        _check_n(n)
        log_sigma = self.p_mean + self.p_std * randn((n,), generator=generator, device=device)  # (n,)
        return log_sigma.exp()


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma' = shift sigma / (1 + (shift - 1) sigma): the timestep shift of Esser et al. 2024
    (Sec. 5.3.2; diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...)``); 1 is the identity,
    shift > 1 moves every sigma in (0, 1) towards noise. Any shape, same shape out."""
    if shift == 1.0:
        return sigma
    return shift * sigma / (1 + (shift - 1) * sigma)


def _check_shift(shift: float) -> float:
    if not isinstance(shift, (int, float)) or not shift > 0:
        raise ValueError(f"shift: expected a number > 0, got {shift!r}")
    return float(shift)


class LogitNormalSampling(SigmaSampler):
    """sigma = sigmoid(m + s z), z ~ N(0, 1), then `shift_sigma` (Esser et al. 2024, Eq. 19).

    SD3 trains with m = 0, s = 1 ("lognorm(0.00, 1.00)", the paper's best setting, Table 1):
    the middle of the trajectory, where the velocity is hardest to predict, is drawn most.
    The draws lie in (0, 1), so the velocity target is finite everywhere.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, shift: float = 1.0):
        if not isinstance(std, (int, float)) or not std > 0:
            raise ValueError(f"std: expected a number > 0, got {std!r}")
        self.mean, self.std, self.shift = float(mean), float(std), _check_shift(shift)

    def __call__(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        _check_n(n)
        u = self.mean + self.std * randn((n,), generator=generator, device=device)  # (n,) logit(sigma)
        return shift_sigma(torch.sigmoid(u), self.shift)


class UniformSampling(SigmaSampler):
    """sigma ~ U[0, 1), then `shift_sigma`: plain rectified flow (Liu et al. 2023; Esser et al. 2024's
    "rf" baseline)."""

    def __init__(self, shift: float = 1.0):
        self.shift = _check_shift(shift)

    def __call__(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        _check_n(n)
        draw_device = generator.device if generator is not None else device
        u = torch.rand((n,), generator=generator, device=draw_device).to(device)  # (n,)
        return shift_sigma(u, self.shift)
