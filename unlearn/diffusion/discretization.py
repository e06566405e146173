"""Noise-level schedules: the sigmas a sampler walks through and a model was trained on.

A `Discretization` turns a step count n into n noise levels sigma_0 > ... > sigma_{n-1}
(plus a trailing 0 by default), in the variance-exploding convention x = x0 + sigma * eps
(Karras et al. 2022, Sec. 2). Two families:

* `LegacyDDPMDiscretization`: the 1000-step DDPM schedule of Stable Diffusion
  (Ho et al. 2020; Rombach et al. 2022), sigma_t = sqrt((1 - abar_t) / abar_t), with the
  inference-time timestep spacings of Lin et al. 2024 ("Common Diffusion Noise Schedules
  and Sample Steps are Flawed", Table 2) exactly as diffusers' schedulers compute them.
* `EDMDiscretization`: Karras et al. 2022, Eq. 5 (the rho-spaced schedule).

`FlowMatchDiscretization` is the rectified-flow family (SD3, Flux): x = (1 - sigma) x0 +
sigma eps with sigma in [0, 1]. A discretization says how its family noises data
(`add_noise`) and how large the noise it starts from is (`prior_scale`), so samplers that
step in terms of (x - D) / sigma (Euler, Heun) serve both families unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from .parameterization import sigma_from_alphas_cumprod

__all__ = [
    "Discretization",
    "LegacyDDPMDiscretization",
    "EDMDiscretization",
    "FlowMatchDiscretization",
    "calculate_shift",
]

_SPACINGS = ("trailing", "leading", "linspace")
_BETA_SCHEDULES = ("scaled_linear", "linear")
# diffusers' stand-in for abar_T = 0 under zero-terminal-SNR rescaling (smallest fp16 subnormal):
# it keeps sigma_max finite (about 4096).
_ZERO_SNR_ABAR = 2.0**-24


class Discretization(ABC):
    """Contract: ``discretization(n) -> sigmas``, descending, of shape (n + 1,) ending in 0."""

    def __call__(
        self,
        n: int,
        do_append_zero: bool = True,
        device: torch.device | str | None = None,
        flip: bool = False,
    ) -> torch.Tensor:
        """Return n sigmas (descending), then a 0 if ``do_append_zero``; reversed if ``flip``.

        Returns a float32 tensor of shape (n,) or (n + 1,) on ``device``.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive number of steps, got {n!r}")
        sigmas = self.get_sigmas(n).to(dtype=torch.float32, device=device)  # (n,)
        if do_append_zero:
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        return sigmas.flip(0) if flip else sigmas

    @abstractmethod
    def get_sigmas(self, n: int) -> torch.Tensor:
        """The n noise levels in descending order, shape (n,), on the CPU."""

    def prior_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        """The std of x at the first noise level for unit-variance data: unit Gaussian noise is
        scaled by this to start sampling. x = x0 + sigma eps: sqrt(1 + sigma^2)."""
        return torch.sqrt(1.0 + sigma_max**2)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x at noise level sigma (B,) for clean x0 and unit noise eps (B, ...): x0 + sigma eps."""
        return x0 + sigma.reshape(-1, *[1] * (x0.ndim - 1)) * eps

    def denoising_target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What a denoiser's (x - x0) / sigma should equal at x = `add_noise`(x0, eps, sigma): eps here."""
        return eps


class EDMDiscretization(Discretization):
    """sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho (Karras et al. 2022, Eq. 5)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"sigma_min, sigma_max: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if rho <= 0:
            raise ValueError(f"rho: expected a positive number, got {rho}")
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def get_sigmas(self, n: int) -> torch.Tensor:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)  # (n,)
        inv_rho_max = self.sigma_max ** (1 / self.rho)
        inv_rho_min = self.sigma_min ** (1 / self.rho)
        return (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** self.rho


def make_alphas_cumprod(
    linear_start: float, linear_end: float, num_timesteps: int, beta_schedule: str, rescale_betas_zero_snr: bool
) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), shape (num_timesteps,), returned as float64.

    "linear": beta_t evenly spaced (Ho et al. 2020); "scaled_linear": sqrt(beta_t) evenly
    spaced (latent diffusion). ``rescale_betas_zero_snr`` applies Lin et al. 2024, Algorithm 1
    (shift and scale sqrt(abar) so the last one is 0, i.e. zero terminal SNR).

    The products are taken in float32, as diffusers' schedulers do, so the values equal
    theirs exactly (float64 arithmetic would differ by up to 1e-5 relative in sigma near t = 0,
    where 1 - abar_t is tiny).
    """
    if beta_schedule == "linear":
        betas = torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule: expected one of {_BETA_SCHEDULES}, got {beta_schedule!r}")
    if rescale_betas_zero_snr:
        sqrt_abar = torch.cumprod(1 - betas, dim=0).sqrt()
        first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
        sqrt_abar = (sqrt_abar - last) * first / (first - last)
        abar = sqrt_abar**2
        alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
        betas = 1 - alphas
    alphas_cumprod = torch.cumprod(1 - betas, dim=0).to(torch.float64)
    if rescale_betas_zero_snr:
        alphas_cumprod[-1] = _ZERO_SNR_ABAR  # a fresh tensor, not an input
    return alphas_cumprod


class LegacyDDPMDiscretization(Discretization):
    """The discrete DDPM schedule (Stable Diffusion 1.x/2.x) with diffusers' timestep spacings.

    For n < num_timesteps the n timesteps are those of diffusers' Euler/Heun/DDIM schedulers
    with the same ``timestep_spacing`` and ``steps_offset`` (Lin et al. 2024, Table 2):

    * "trailing": round(arange(T, 0, -T/n)) - 1, e.g. 999, 899, ..., 99 (T = 1000, n = 10);
    * "leading": arange(n) * (T // n) reversed, + steps_offset, e.g. 901, ..., 1 (SD 1.5 uses 1;
      like diffusers, the other spacings ignore steps_offset);
    * "linspace": linspace(0, T - 1, n) reversed; not integers in general (Euler-family
      schedulers keep the fractions; diffusers' DDIM rounds them).

    The sigma of a fractional timestep is interpolated linearly in sigma (as diffusers does).
    For n == num_timesteps the full training grid is returned whatever the spacing, so
    `DiscreteDenoiser` and `DiscreteSampling` can build their index tables from it.
    """

    def __init__(
        self,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        num_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        timestep_spacing: str = "trailing",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if not isinstance(num_timesteps, int) or num_timesteps < 2:
            raise ValueError(f"num_timesteps: expected an integer >= 2, got {num_timesteps!r}")
        if timestep_spacing not in _SPACINGS:
            raise ValueError(f"timestep_spacing: expected one of {_SPACINGS}, got {timestep_spacing!r}")
        if not 0 < linear_start <= linear_end < 1:
            raise ValueError(f"linear_start, linear_end: need 0 < start <= end < 1, got {linear_start}, {linear_end}")
        self.num_timesteps = num_timesteps
        self.timestep_spacing = timestep_spacing
        self.steps_offset = int(steps_offset)
        self.alphas_cumprod = make_alphas_cumprod(
            linear_start, linear_end, num_timesteps, beta_schedule, rescale_betas_zero_snr
        )  # (T,) float64
        self.sigmas_full = sigma_from_alphas_cumprod(self.alphas_cumprod)  # (T,) ascending in t, float64
        self._log_sigmas = self.sigmas_full.log()  # (T,)

    def timesteps(self, n: int) -> torch.Tensor:
        """The n inference timesteps, descending, float64 (integer-valued unless "linspace")."""
        T = self.num_timesteps
        if not isinstance(n, int) or not 1 <= n <= T:
            raise ValueError(f"n: expected an integer number of steps in [1, {T}], got {n!r}")
        if n == T:
            return torch.arange(T - 1, -1, -1, dtype=torch.float64)
        # numpy reproduces diffusers' float arange and round-half-to-even bit for bit.
        if self.timestep_spacing == "linspace":
            t = np.linspace(0, T - 1, n)[::-1]
        elif self.timestep_spacing == "leading":
            t = (np.arange(0, n) * (T // n)).round()[::-1] + self.steps_offset
        else:  # trailing
            t = np.arange(T, 0, -T / n).round() - 1
        return torch.from_numpy(np.array(t, dtype=np.float64))  # a copy: positive strides

    def get_sigmas(self, n: int) -> torch.Tensor:
        if n == self.num_timesteps:
            return self.sigmas_full.flip(0)
        return self.t_to_sigma(self.timesteps(n))

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma at (possibly fractional) timesteps, linear in sigma between grid points.

        t: any shape; clamped to [0, T - 1] like numpy's interp. Returns t's shape, in
        t's floating dtype (float64 for integer input) on t's device.
        """
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.float64
        table = self.sigmas_full.to(device=t.device, dtype=dtype)  # (T,)
        t = t.to(dtype).clamp(0, self.num_timesteps - 1)
        low = t.floor().clamp(max=self.num_timesteps - 2).long()
        w = t - low
        return (1 - w) * table[low] + w * table[low + 1]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of a sigma, interpolating linearly in log sigma.

        The inverse k-diffusion and diffusers (``_sigma_to_t``) use for Karras-type
        schedules; exact on the integer grid. sigma: any shape -> t of the same shape.
        """
        sigma = torch.as_tensor(sigma)
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        log_table = self._log_sigmas.to(device=sigma.device, dtype=dtype)  # (T,) ascending
        log_sigma = sigma.to(dtype).clamp(min=1e-10).log()
        low = (torch.searchsorted(log_table, log_sigma.reshape(-1), right=True) - 1).clamp(0, self.num_timesteps - 2)
        lo, hi = log_table[low], log_table[low + 1]
        w = ((log_sigma.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return (low + w).reshape(sigma.shape)


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's resolution-dependent shift mu: linear in the image's token count between
    (base_seq_len, base_shift) and (max_seq_len, max_shift) (diffusers' ``calculate_shift``)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + base_shift - m * base_seq_len


class FlowMatchDiscretization(Discretization):
    """Rectified flow (Liu et al. 2023; SD3, Esser et al. 2024; Flux): x = (1 - sigma) x0 + sigma eps.

    The n sigmas are those of diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps``:
    ``schedule="scheduler"`` (SD3's pipeline) spaces the timesteps linearly between the
    scheduler's largest and smallest training sigma, ``schedule="linear"`` (Flux's pipeline)
    takes linspace(1, 1/n, n); then the shift: static, sigma' = shift sigma / (1 + (shift - 1)
    sigma) (SD3: shift 3), or resolution-dependent (Flux dev: ``use_dynamic_shifting``),
    sigma' = e^mu / (e^mu + 1/sigma - 1) with mu from ``image_seq_len`` (`calculate_shift`).
    Sampling starts from unit noise (sigma_max = 1), and the network's timestep is 1000 sigma
    (`unlearn.diffusion.scalings.FlowScaling`).
    """

    _SCHEDULES = ("scheduler", "linear")
    #: Samplers that step x = x0 + sigma eps (DDIM, DPM++ 2M, Euler ancestral) refuse this schedule.
    rectified_flow = True

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        image_seq_len: int | None = None,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        schedule: str = "scheduler",
    ):
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps: expected an integer >= 2, got {num_train_timesteps!r}")
        if not shift > 0:
            raise ValueError(f"shift: expected a number > 0, got {shift!r}")
        if schedule not in self._SCHEDULES:
            raise ValueError(f"schedule: expected one of {self._SCHEDULES}, got {schedule!r}")
        if use_dynamic_shifting and (not isinstance(image_seq_len, int) or image_seq_len < 1):
            raise ValueError(f"image_seq_len: dynamic shifting needs the image's token count, got {image_seq_len!r}")
        self.num_train_timesteps, self.shift, self.schedule = num_train_timesteps, float(shift), schedule
        self.use_dynamic_shifting = bool(use_dynamic_shifting)
        self.mu = (
            calculate_shift(image_seq_len, base_image_seq_len, max_image_seq_len, base_shift, max_shift)
            if use_dynamic_shifting
            else None
        )
        T = num_train_timesteps
        train = np.linspace(1, T, T, dtype=np.float32)[::-1].copy() / T  # the scheduler's training sigmas
        if not self.use_dynamic_shifting:
            train = self.shift * train / (1 + (self.shift - 1) * train)
        self.sigma_max, self.sigma_min = float(train[0]), float(train[-1])

    def shifted(self, sigmas: np.ndarray) -> np.ndarray:
        if self.use_dynamic_shifting:
            return math.exp(self.mu) / (math.exp(self.mu) + (1 / sigmas - 1) ** 1.0)
        return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

    def get_sigmas(self, n: int) -> torch.Tensor:
        T = self.num_train_timesteps
        if self.schedule == "linear":
            sigmas = np.linspace(1.0, 1 / n, n).astype(np.float32)
        else:
            sigmas = np.linspace(self.sigma_max * T, self.sigma_min * T, n) / T
        return torch.from_numpy(np.asarray(self.shifted(sigmas), dtype=np.float32))

    def prior_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        """Sampling starts from unit noise: x = eps at sigma = 1."""
        return torch.ones_like(sigma_max)

    @property
    def num_timesteps(self) -> int:
        return self.num_train_timesteps

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Training timesteps t in [0, T) -> sigma: the scheduler's training grid (t + 1) / T with
        the schedule's shift, so t = T - 1 is sigma 1 (pure noise) as DDPM's last timestep is."""
        grid = (t.double().cpu().numpy() + 1) / self.num_train_timesteps
        return torch.as_tensor(self.shifted(grid), dtype=torch.float64, device=t.device)

    def denoising_target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What (x - x0) / sigma equals at x = (1 - sigma) x0 + sigma eps: the velocity eps - x0."""
        return eps - x0

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """(1 - sigma) x0 + sigma eps."""
        s = sigma.reshape(-1, *[1] * (x0.ndim - 1))
        return (1 - s) * x0 + s * eps
