"""A pool of frozen-model sampling trajectories: ESD's x_t without a sampler run per step.

ESD draws, every iteration, a step t uniformly from the ``ddim_steps`` sampler steps and
runs the *frozen* model's guided sampler (CFG ``start_guidance``) from fresh noise for t
steps to get x_t (official ``esd_sd.py``: ``run_till_timestep = randint(0, N - 1)``). That
is (N - 1) / 2 guided steps (2 UNet forwards each) per iteration on average, at batch 1,
where the GPU is launch-bound.

`TrajectoryPool` samples ``pool_size`` trajectories **in one batch**, each from its own
fresh noise, its own randomly drawn prompt and its own uniformly drawn stop step t. The
batch is sorted by t and shrinks as trajectories reach their step (a trajectory stopped at
t takes exactly t sampler steps), so the pool costs the same UNet work as the reference,
sum of t, but in at most N - 1 batched calls per ``pool_size`` samples. Each training
iteration takes ``n`` samples no iteration has used yet; the sampling model is frozen, so
the pool never goes stale. When fewer than ``n`` unused samples are left the pool is
refilled (leftovers are dropped, never reused).

``reuse`` = 1 (the default, the reference's semantics): every sample comes from its own
trajectory, so the samples of every iteration are independent of each other and of every
other iteration's. ``reuse`` = r > 1: each trajectory stops at r distinct steps drawn
uniformly from the step range and is run once, to the last of them; its x at each of the
r steps is a sample, and the pool's P r samples are shuffled. Each sample's step is still
uniform and its x_t has the reference's distribution at that step (a fresh trajectory's);
only samples that share a trajectory are correlated. The cost per sample drops from about
N / 2 sampler steps to E[max of r steps] / r ≈ N / (r + 1).

Cost per iteration (``n`` = batch size, P = ``pool_size``, N = ``ddim_steps``, reuse 1):
about (N - 1) n UNet image-forwards for x_t on average, as in the reference, spread over
(N - 1) n / P batched sampler calls instead of (N - 1) / 2 calls at batch 2; plus the
loss's forwards. Memory: P r latents (and their starting noises).

**Recorded predictions** (``record_predictions``, on by default when ``reuse`` > 1): at each
step the sampler evaluates the frozen model at x_t on every branch of its guider (CFG: the
empty prompt and the trajectory's prompt), which are ESD's teacher predictions at that x_t.
The pool keeps those x0 estimates with each sample (each trajectory runs one step past its
last stop to get the ones at that stop), so the loss skips its frozen forwards: with reuse r
they cost one sampler step per r samples instead of one per sample. They are the same
computation in a different batch, so they agree with a separate call to float rounding.
Memory: P r latents per branch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.diffusion.samplers import Sampler, default_noise_sampler

log = logging.getLogger(__name__)

__all__ = [
    "TrajectoryBatch",
    "TrajectoryPool",
    "sample_at_steps",
    "run_to_stops",
    "sample_to_steps",
]

Cond = Mapping[str, Any]
DenoiserFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]
# prompt indices (P,) -> (cond, uc) for the sampler, each with batch P
CondsFor = Callable[[torch.Tensor], tuple[Cond, Cond | None]]


@dataclass
class TrajectoryBatch:
    """x: (n, C, H, W) at sigma: (n,); step: (n,) sampler step t; prompt: (n,) prompt index;
    denoised: the frozen denoiser's x0 at (x, sigma) per branch of the sampler's guider
    (``{"uc": (n, C, H, W), "cond": ...}``), when the source records them, else None."""

    x: torch.Tensor
    sigma: torch.Tensor
    step: torch.Tensor
    prompt: torch.Tensor
    denoised: dict[str, torch.Tensor] | None = None


def _head(value: Any, batch: int, keep: int) -> Any:
    """The first ``keep`` rows of a per-sample tensor (batch ``batch``); anything else as it is."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
        return value[:keep]
    return value


@torch.no_grad()
def sample_at_steps(
    sampler: Sampler,
    denoiser: DenoiserFn,
    noise: torch.Tensor,
    stops: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Cond,
    uc: Cond | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run each sample's trajectory once, recording it after each of its ``stops``, in one shrinking batch.

    noise: (P, C, H, W) unit Gaussian; stops: (P, r) long in [0, len(sigmas) - 1). Returns x
    (P, r, C, H, W) with x[i, k] at sigmas[stops[i, k]], the same as ``sampler(..., end_step=stops[i, k])``
    on sample i alone. Samples are sorted by their last stop so the running set is a prefix;
    per-sample entries of the sampler's ``state`` (multistep history) are cut with it.
    """
    return run_to_stops(sampler, denoiser, noise, stops, sigmas, cond, uc, generator)[0]


@torch.no_grad()
def run_to_stops(
    sampler: Sampler,
    denoiser: DenoiserFn,
    noise: torch.Tensor,
    stops: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Cond,
    uc: Cond | None,
    generator: torch.Generator | None = None,
    record: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """`sample_at_steps`'s x (P, r, C, H, W), and with ``record`` the denoiser's own x0 at every
    recorded x, per branch of the guider: ``{branch: (P, r, C, H, W)}`` (else None).

    The sampler evaluates the denoiser at x_t on each of its guider's branches (``"uc"`` and
    ``"cond"`` for CFG) before it steps, so these predictions come with the trajectory: each
    trajectory runs one step past its last stop, and no other forward is needed. Needs a guider
    that names its branches and a sampler whose first evaluation of a step is at x_t itself (DDIM,
    Euler without churn, Heun, DPM++ 2M); anything else is refused.
    """
    branches = sampler.guider.branches() if record else ()
    if branches is None:
        raise ValueError(
            f"{type(sampler.guider).__name__}: the guider does not name its branches, so the sampler's "
            "predictions cannot be read back; set record_predictions to false"
        )
    stops = stops.cpu()
    last = stops.max(dim=1).values  # (P,)
    order = torch.argsort(last, descending=True, stable=True)  # (P,)
    last_sorted, stops_sorted = last[order], stops[order]
    idx = order.to(noise.device)
    x = noise[idx] * sampler.discretization.prior_scale(sigmas[0])  # x at sigmas[0]
    cond = {k: v[idx] if torch.is_tensor(v) else v for k, v in cond.items()}
    uc = None if uc is None else {k: v[idx] if torch.is_tensor(v) else v for k, v in uc.items()}
    out = torch.empty((x.shape[0], stops.shape[1], *x.shape[1:]), dtype=x.dtype, device=x.device)
    denoised = {b: torch.empty_like(out) for b in branches}
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(x_in: torch.Tensor, sigma_in: torch.Tensor, cond_in: Cond) -> torch.Tensor:
        x0 = denoiser(x_in, sigma_in, cond_in)
        calls.append((x_in, sigma_in, x0))
        return x0

    state: MutableMapping[str, Any] = {}
    noise_sampler = default_noise_sampler(generator)
    running = x.shape[0]
    # Recording runs a trajectory through the step at its last stop too: that step's first
    # denoiser call is the prediction at the stop's x.
    past = 0 if record else 1
    for i in range(int(last_sorted[0]) + 1):
        rows, cols = (stops_sorted[:running] == i).nonzero(as_tuple=True)  # samples recorded at step i
        rows, cols = rows.to(x.device), cols.to(x.device)
        out[rows, cols] = x[rows]
        keep = int((last_sorted >= i + past).sum())  # samples that still need step i
        if keep == 0:
            break
        if keep < running:
            x = x[:keep]
            cond = {k: _head(v, running, keep) for k, v in cond.items()}
            uc = None if uc is None else {k: _head(v, running, keep) for k, v in uc.items()}
            state = {k: _head(v, running, keep) for k, v in state.items()}
            running = keep
        calls.clear()
        x_before = x
        x = sampler.step(recording if record else denoiser, x, i, sigmas, cond, uc, state, noise_sampler=noise_sampler)
        if record and rows.numel():
            for b, x0 in zip(branches, _branch_predictions(calls, x_before, sigmas[i], len(branches), sampler)):
                denoised[b][rows, cols] = x0[rows]
    result = torch.empty_like(out)
    result[idx] = out
    if not record:
        return result, None
    restored = {}
    for b, d in denoised.items():
        restored[b] = torch.empty_like(d)
        restored[b][idx] = d
    return result, restored


def _branch_predictions(
    calls: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    sigma: torch.Tensor,
    k: int,
    sampler: Sampler,
) -> tuple[torch.Tensor, ...]:
    """The k branches' x0 (each (B, C, H, W)) of the step's first denoiser call, checked to be at x and sigma."""
    if calls:
        x_in, sigma_in, x0 = calls[0]
        if (
            x_in.shape[0] == k * x.shape[0]
            and all(torch.equal(part, x) for part in x_in.chunk(k))
            and bool((sigma_in == sigma.to(sigma_in.dtype)).all())
        ):
            return x0.chunk(k)
    raise ValueError(
        f"{type(sampler).__name__}: its step does not first evaluate the denoiser at the step's own x and sigma, "
        "so its predictions are not the frozen model's at x_t; set record_predictions to false"
    )


def sample_to_steps(
    sampler: Sampler,
    denoiser: DenoiserFn,
    noise: torch.Tensor,
    stop: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Cond,
    uc: Cond | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`sample_at_steps` with one stop per sample: stop (P,) -> x (P, C, H, W) at sigmas[stop]."""
    return sample_at_steps(sampler, denoiser, noise, stop[:, None], sigmas, cond, uc, generator)[:, 0]


def check_step_range(step_range: Any, num_steps: int, name: str = "step_range") -> tuple[int, int]:
    """(lo, hi) of a ``[lo, hi]`` range of sampler steps, 0 <= lo < hi <= num_steps; None: every step."""
    if step_range is None:
        return 0, num_steps
    values = list(step_range) if isinstance(step_range, Sequence) and not isinstance(step_range, str) else None
    if (
        values is None
        or len(values) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        or not 0 <= values[0] < values[1] <= num_steps
    ):
        raise ValueError(
            f"{name}: expected [lo, hi] with 0 <= lo < hi <= the sampler's num_steps ({num_steps}), got {step_range!r}"
        )
    return int(values[0]), int(values[1])


class TrajectoryPool:
    """Batched frozen-model trajectories, each stopped at its own random step and used once.

    Built from the engine's ``trajectory_config`` block; the engine adds the runtime arguments.

    Args:
        pool_size: trajectories generated per refill, in one batch.
        step_range: [lo, hi]: t ~ U{lo, ..., hi-1} of the sampler's N steps (None: every step).
        reuse: samples per trajectory, at distinct steps (1: the reference, independent samples;
            see the module docstring); at most the number of steps in ``step_range``.
        record_predictions: keep the frozen model's x0 on each guider branch at every served x_t
            (`run_to_stops`), so the loss need not evaluate it again; None:
            when ``reuse`` > 1 (reuse 1 stays the reference's computation, bit for bit).
        sampler: (runtime) the frozen sampler with its guider (CFG) and ``num_steps`` N set.
        num_prompts: (runtime) trajectories draw their prompt uniformly from ``range(num_prompts)``.
        seed: (runtime) seeds the CPU generator of noise, prompts and steps (device independent).
    """

    def __init__(
        self,
        sampler: Sampler,
        num_prompts: int,
        seed: int = 0,
        pool_size: int = 8,
        step_range: Sequence[int] | None = None,
        reuse: int = 1,
        record_predictions: bool | None = None,
    ):
        num_steps = getattr(sampler, "num_steps", None)
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"sampler: the trajectory sampler needs num_steps (a positive integer), got {num_steps!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size: expected a positive integer, got {pool_size!r}")
        if num_prompts < 1:
            raise ValueError("num_prompts: expected at least one prompt")
        self.step_range = check_step_range(step_range, num_steps)
        span = self.step_range[1] - self.step_range[0]
        if isinstance(reuse, bool) or not isinstance(reuse, int) or not 1 <= reuse <= span:
            raise ValueError(f"reuse: expected an integer in [1, {span}] (the steps in step_range), got {reuse!r}")
        self.reuse = reuse
        if record_predictions is not None and not isinstance(record_predictions, bool):
            raise ValueError(f"record_predictions: expected true, false or null, got {record_predictions!r}")
        self.record_predictions = reuse > 1 if record_predictions is None else record_predictions
        if self.record_predictions and sampler.guider.branches() is None:
            raise ValueError(
                f"record_predictions: the sampler's guider {type(sampler.guider).__name__} does not name its "
                "branches; set it to false"
            )
        self.sampler = sampler
        self.num_steps = num_steps
        self.pool_size = pool_size
        self.num_prompts = num_prompts
        self.generator = torch.Generator().manual_seed(int(seed))
        self.x: torch.Tensor | None = None  # (P r, C, H, W) each at sigmas[steps[i]]
        self.noise: torch.Tensor | None = None  # (P r, C, H, W) their trajectories' starting noise
        self.denoised: dict[str, torch.Tensor] | None = None  # {branch: (P r, C, H, W)} with record_predictions
        self.steps: torch.Tensor | None = None  # (P r,)
        self.prompts: torch.Tensor | None = None  # (P r,)
        self.sigmas: torch.Tensor | None = None  # (N + 1,)
        self.cursor = 0
        self.refills = 0

    def manual_seed(self, seed: int) -> None:
        """Reseed before anything is drawn (e.g. per DDP rank, known only once training starts)."""
        self.generator.manual_seed(int(seed))

    @property
    def capacity(self) -> int:
        """Samples per refill: ``pool_size`` trajectories times ``reuse``."""
        return self.pool_size * self.reuse

    @property
    def remaining(self) -> int:
        """Samples not handed out yet."""
        return 0 if self.x is None else self.capacity - self.cursor

    @torch.no_grad()
    def refill(
        self,
        denoiser: DenoiserFn,
        conds_for: CondsFor,
        latent_shape: tuple[int, ...],
        device: torch.device | str | None = None,
    ) -> None:
        """Sample ``pool_size`` new trajectories from fresh noise, each to ``reuse`` random steps of its own."""
        g = self.generator
        P, r = self.pool_size, self.reuse
        prompts = torch.randint(self.num_prompts, (P,), generator=g)  # (P,)
        if r == 1:
            steps = torch.randint(*self.step_range, (P,), generator=g)[:, None]  # (P, 1)
        else:  # r distinct steps per trajectory, each uniform over the range
            lo, hi = self.step_range
            steps = torch.rand(P, hi - lo, generator=g).argsort(dim=1)[:, :r].sort(dim=1).values + lo  # (P, r)
        noise = torch.randn((P, *latent_shape), generator=g).to(device)  # (P, C, H, W)
        cond, uc = conds_for(prompts)
        sigmas = self.sampler.get_sigmas(self.num_steps, device=noise.device)  # (N + 1,)
        x, denoised = run_to_stops(  # (P, r, C, H, W), {branch: (P, r, C, H, W)} or None
            self.sampler, denoiser, noise, steps, sigmas, cond, uc, generator=g, record=self.record_predictions
        )
        # Shuffled so that an iteration's samples (and consecutive iterations) mix trajectories.
        order = torch.arange(P * r) if r == 1 else torch.randperm(P * r, generator=g)
        order = order.to(x.device)
        self.x = x.flatten(0, 1)[order]
        self.denoised = None if denoised is None else {b: d.flatten(0, 1)[order] for b, d in denoised.items()}
        self.noise = noise.repeat_interleave(r, dim=0)[order]
        self.steps = steps.flatten()[order.cpu()].to(noise.device)
        self.prompts = prompts.repeat_interleave(r)[order.cpu()].to(noise.device)
        self.sigmas = sigmas
        self.cursor = 0
        self.refills += 1
        log.debug("trajectory pool refill %d: %d trajectories, steps %s", self.refills, P, steps.tolist())

    def take(
        self,
        n: int,
        denoiser: DenoiserFn,
        conds_for: CondsFor,
        latent_shape: tuple[int, ...],
        device: torch.device | str | None = None,
    ) -> TrajectoryBatch:
        """``n`` unused samples at their own random steps; refills when too few are left."""
        if not 1 <= n <= self.capacity:
            raise ValueError(f"batch_size: expected 1 <= batch_size <= pool_size x reuse ({self.capacity}), got {n}")
        if self.remaining < n:
            self.refill(denoiser, conds_for, latent_shape, device)
        assert self.x is not None and self.steps is not None and self.prompts is not None and self.sigmas is not None
        sl = slice(self.cursor, self.cursor + n)
        self.cursor += n
        steps = self.steps[sl]
        denoised = None if self.denoised is None else {b: d[sl] for b, d in self.denoised.items()}
        return TrajectoryBatch(
            x=self.x[sl], sigma=self.sigmas[steps], step=steps, prompt=self.prompts[sl], denoised=denoised
        )
