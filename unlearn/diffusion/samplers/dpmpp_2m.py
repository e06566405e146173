"""DPM-Solver++(2M): the second-order multistep data-prediction solver (Lu et al. 2022,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", Alg. 2).

In sigma space with t = -log(sigma) (so t is the half-log-SNR lambda) and h = t_{i+1} - t_i:

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h) D_i',
    D_i' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},   r = (t_i - t_{i-1}) / h,

with D_i' = D_i on the first step (no history) and on the step to sigma = 0, where the
update reduces to x = D. This equals diffusers' DPMSolverMultistepScheduler with
algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
final_sigmas_type="zero" (its last step is then first order whatever lower_order_final says).
"""

from __future__ import annotations

from .base import Sampler

__all__ = ["DPMPP2MSampler"]


class DPMPP2MSampler(Sampler):
    """DPM-Solver++(2M); keeps the previous x0 estimate in ``state`` between steps."""

    def step(self, denoiser, x, i, sigmas, cond, uc, state, *, noise_sampler=None):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        has_history = i > 0 and state.get("step") == i - 1 and state.get("denoised") is not None
        denoised_prev = state.get("denoised") if has_history else None
        denoised = self.denoise(denoiser, x, sigma, cond, uc)
        self._record(state, i, denoised)
        if sigma_next == 0:
            return denoised
        t, t_next = -sigma.log(), -sigma_next.log()
        h = t_next - t
        if denoised_prev is None:
            denoised_d = denoised
        else:
            r = (t + sigmas[i - 1].log()) / h  # (t_i - t_{i-1}) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev
        return (sigma_next / sigma) * x - (-h).expm1() * denoised_d
