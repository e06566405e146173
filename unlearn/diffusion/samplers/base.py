"""The sampler contract: integrate the probability-flow ODE / reverse SDE in sigma space.

Samplers are model-independent (k-diffusion style): they see a denoiser
``denoiser(x, sigma, cond) -> x0`` with sigma: (B,), and walk x from sigmas[0] down to
sigmas[-1] (usually 0). ``step`` advances one interval and is a pure function of its
arguments plus ``state`` (multistep history), so training code can run a trajectory
step by step, e.g. under gradient checkpointing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import torch
from tqdm.auto import tqdm

from ..guiders import Guider, IdentityGuider
from ..utils import build, randn_like

__all__ = ["Sampler", "DenoiserFn", "NoiseSampler", "default_noise_sampler", "to_d"]

DenoiserFn = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Cond = Mapping[str, Any]
State = MutableMapping[str, Any]


def default_noise_sampler(generator: torch.Generator | None = None) -> NoiseSampler:
    """``noise_sampler(x, sigma, sigma_next) -> eps`` drawing N(0, I) like x from ``generator``."""

    def sample(x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return randn_like(x, generator)

    return sample


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """ODE slope dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Eq. 4 / Alg. 1, line 4)."""
    return (x - denoised) / sigma


class Sampler(ABC):
    """Base class: schedule, guidance and the sampling loop; subclasses implement `step`.

    Args:
        discretization_config: the schedule (e.g. `LegacyDDPMDiscretization`).
        num_steps: default number of steps for `get_sigmas` / `__call__`.
        guider_config: a `Guider` (default `IdentityGuider`, i.e. no guidance).
        verbose: show a tqdm progress bar.
    """

    #: Whether the steps hold on rectified-flow schedules (x = (1 - sigma) x0 + sigma eps): only
    #: samplers that integrate the ODE slope (x - D) / sigma deterministically do (Euler, Heun).
    supports_rectified_flow: bool = False

    def __init__(
        self,
        discretization_config: Mapping[str, Any],
        num_steps: int | None = None,
        guider_config: Mapping[str, Any] | None = None,
        verbose: bool = False,
    ):
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"num_steps: expected a positive integer or None, got {num_steps!r}")
        self.discretization = build(discretization_config, "discretization_config")
        if getattr(self.discretization, "rectified_flow", False) and not self.supports_rectified_flow:
            raise ValueError(
                f"discretization_config: {type(self).__name__} steps x = x0 + sigma eps, not the rectified flow of "
                f"{type(self.discretization).__name__}; sample this model with euler or heun"
            )
        self.num_steps = num_steps
        self.guider: Guider = IdentityGuider() if guider_config is None else build(guider_config, "guider_config")
        self.verbose = verbose

    def get_sigmas(self, num_steps: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """Descending sigmas of shape (n + 1,), the last one 0."""
        n = self.num_steps if num_steps is None else num_steps
        if n is None:
            raise ValueError("num_steps: not given here nor to the sampler's constructor")
        return self.discretization(n, do_append_zero=True, device=device)

    def denoise(
        self, denoiser: DenoiserFn, x: torch.Tensor, sigma: torch.Tensor | float, cond: Cond, uc: Cond | None
    ) -> torch.Tensor:
        """Guided x0 estimate at one noise level. x: (B, ...), sigma: scalar or (B,) -> (B, ...)."""
        sigma_b = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma_b.ndim == 0:
            sigma_b = sigma_b.expand(x.shape[0])  # (B,)
        x_in, sigma_in, cond_in = self.guider.prepare_inputs(x, sigma_b, cond, uc)
        return self.guider(denoiser(x_in, sigma_in, cond_in), sigma_b)

    @abstractmethod
    def step(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,
        i: int,
        sigmas: torch.Tensor,
        cond: Cond,
        uc: Cond | None,
        state: State,
        *,
        noise_sampler: NoiseSampler | None = None,
    ) -> torch.Tensor:
        """Advance x (B, ...) from sigmas[i] to sigmas[i + 1]; returns a new tensor.

        Subclasses record the x0 estimate they used in ``state["denoised"]`` and the step
        index in ``state["step"]``; multistep samplers read them back at the next step.
        """

    @staticmethod
    def _record(state: State, i: int, denoised: torch.Tensor) -> None:
        state["step"] = i
        state["denoised"] = denoised

    def __call__(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,
        cond: Cond,
        uc: Cond | None = None,
        num_steps: int | None = None,
        *,
        start_step: int = 0,
        end_step: int | None = None,
        sigmas: torch.Tensor | None = None,
        noise_sampler: NoiseSampler | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        state: State | None = None,
    ) -> torch.Tensor:
        """Run steps start_step .. end_step - 1 and return x at sigmas[end_step].

        x: (B, C, H, W). With ``start_step == 0`` it is unit Gaussian noise and is scaled by
        the discretization's ``prior_scale`` (sqrt(1 + sigmas[0]^2), the prior std of x = x0 + sigma eps
        for unit-variance data; 1 for rectified flow);
        otherwise it is the current sample at sigmas[start_step]. ``end_step=None`` runs to
        the end (sigma 0: the final sample). Pass the same ``state`` dict to consecutive
        partial runs so multistep samplers keep their history. ``callback`` receives
        {"i", "x", "sigma", "sigma_next", "denoised"} after each step.
        """
        if sigmas is None:
            sigmas = self.get_sigmas(num_steps, device=x.device)
        if sigmas.ndim != 1 or sigmas.shape[0] < 2:
            raise ValueError(f"sigmas: expected a 1-D tensor with at least 2 values, got shape {tuple(sigmas.shape)}")
        n = sigmas.shape[0] - 1
        end_step = n if end_step is None else end_step
        if not 0 <= start_step <= end_step <= n:
            raise ValueError(f"start_step, end_step: need 0 <= {start_step} <= {end_step} <= {n} (the step count)")
        noise_sampler = noise_sampler or default_noise_sampler(generator)
        state = {} if state is None else state
        if start_step == 0:
            x = x * self.discretization.prior_scale(sigmas[0])
        for i in tqdm(range(start_step, end_step), disable=not self.verbose, desc=type(self).__name__):
            x = self.step(denoiser, x, i, sigmas, cond, uc, state, noise_sampler=noise_sampler)
            if callback is not None:
                info = {"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1]}
                callback({**info, "denoised": state.get("denoised")})
        return x
