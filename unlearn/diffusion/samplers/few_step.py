"""Few-step sampling of a distilled generator (DMD2, Yin et al. 2024, Sec. 4.4).

A multi-step DMD2 generator G is trained at a few fixed conditioning timesteps, e.g.
t = 999, 749, 499, 249. Sampling alternates denoising and re-noising with fresh noise:

    x̂_i = G(x_{t_i}, t_i),      x_{t_{i+1}} = x̂_i + sigma_{i+1} eps,   eps ~ N(0, I),

starting from pure noise at t_0 and returning the last x̂ (re-noised by the schedule's own
``add_noise``: x0 + sigma eps in the sigma-space convention, the DDPM ``add_noise`` of the
official code; (1 - sigma) x0 + sigma eps on a rectified flow). The same
schedule is used for training (backward simulation runs it partially, see
`unlearn.engine.dmd2`), so training and sampling inputs come from one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Sampler, default_noise_sampler

__all__ = ["FewStepSampler", "uniform_timesteps", "per_sample_noise_sampler"]


def uniform_timesteps(n: int, num_timesteps: int = 1000) -> list[int]:
    """DMD2's n conditioning timesteps: T - 1 - i * (T // n), e.g. [999, 749, 499, 249] for n = 4."""
    if not isinstance(n, int) or not 1 <= n <= num_timesteps:
        raise ValueError(f"num_steps: expected an integer in [1, {num_timesteps}], got {n!r}")
    return [num_timesteps - 1 - i * (num_timesteps // n) for i in range(n)]


def per_sample_noise_sampler(generators: Sequence[torch.Generator]):
    """A noise sampler drawing image i's noise from ``generators[i]`` (CPU), so a sample
    does not depend on the batch it was drawn in."""

    def sample(x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if len(generators) != x.shape[0]:
            raise ValueError(f"noise sampler: {len(generators)} generators for a batch of {x.shape[0]}")
        noise = [torch.randn(tuple(x.shape[1:]), generator=g) for g in generators]
        return torch.stack(noise).to(device=x.device, dtype=x.dtype)

    return sample


class FewStepSampler(Sampler):
    """Denoise with the generator at each of ``timesteps``, re-noise to the next with fresh noise.

    Args:
        discretization_config: a discretization with ``t_to_sigma`` and ``num_timesteps``
            (`LegacyDDPMDiscretization`; `FlowMatchDiscretization`, whose re-noising is
            (1 - sigma) x̂ + sigma eps).
        timesteps: the generator's conditioning timesteps, strictly descending; [999] is a
            one-step generator.
        num_steps: if given and different from ``len(timesteps)``, use DMD2's uniform
            timesteps for that many steps instead (`uniform_timesteps`).
        guider_config: default `IdentityGuider`: the teacher's guidance is distilled into G.
    """

    supports_rectified_flow = True  # re-noising goes through the discretization's add_noise

    def __init__(
        self,
        discretization_config,
        timesteps: Sequence[int] = (999, 749, 499, 249),
        num_steps: int | None = None,
        guider_config=None,
        verbose: bool = False,
    ):
        super().__init__(discretization_config, None, guider_config, verbose)
        if not hasattr(self.discretization, "t_to_sigma") or not hasattr(self.discretization, "num_timesteps"):
            raise ValueError(
                f"discretization_config: FewStepSampler needs a DDPM discretization with t_to_sigma, "
                f"got {type(self.discretization).__name__}"
            )
        self.timesteps = self._check(timesteps)
        self.num_steps = len(self.timesteps)
        if num_steps is not None and num_steps != self.num_steps:
            self.timesteps = uniform_timesteps(num_steps, self.discretization.num_timesteps)
            self.num_steps = num_steps

    def _check(self, timesteps: Sequence[int]) -> list[int]:
        T = self.discretization.num_timesteps
        ts = [int(t) for t in timesteps]
        if not ts or any(t != float(u) for t, u in zip(ts, timesteps)):
            raise ValueError(f"timesteps: expected a non-empty list of integers, got {list(timesteps)!r}")
        if any(not 0 <= t < T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps: expected strictly descending integers in [0, {T}), got {ts}")
        return ts

    def timesteps_for(self, num_steps: int | None = None) -> list[int]:
        """The conditioning timesteps of a ``num_steps`` run (the configured ones by default)."""
        if num_steps is None or num_steps == len(self.timesteps):
            return list(self.timesteps)
        return uniform_timesteps(num_steps, self.discretization.num_timesteps)

    def get_sigmas(self, num_steps: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """sigma(t_0) > ... > sigma(t_{n-1}), then 0: shape (n + 1,), float32."""
        t = torch.tensor(self.timesteps_for(num_steps), dtype=torch.float64)
        sigmas = self.discretization.t_to_sigma(t).to(torch.float32)  # (n,)
        return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)

    def step(self, denoiser, x, i, sigmas, cond, uc, state, *, noise_sampler=None):
        denoised = self.denoise(denoiser, x, sigmas[i], cond, uc)  # x̂_i: (B, C, H, W)
        self._record(state, i, denoised)
        if sigmas[i + 1] == 0:
            return denoised
        eps = (noise_sampler or default_noise_sampler())(x, sigmas[i], sigmas[i + 1])
        return self.discretization.add_noise(denoised, eps, sigmas[i + 1].expand(x.shape[0]))
