"""The attacked model as its own classifier: its denoising loss on images of the concept.

UnlearnDiffAtk (Zhang et al., ECCV 2024) and concept inversion (Pham et al., ICLR 2024) search
for the prompt under which the erased model best denoises images of the concept:
E_{t, eps} ‖target − eps_θ(x_t, t | c′)‖², x0 the images in the model's space. The model's own
eps estimate (x_t − D(x_t)) / sigma (``Denoiser.predict_eps``) makes this work for every model:

* DDPM models (a `DiscreteDenoiser`, SD 1.x/2.x/SDXL, eps or v): x_t = x0 + sigma_t eps on the
  denoiser's training grid, target eps.
* Rectified flow (SD3, Flux: a continuous denoiser, a `FlowMatchDiscretization` to sample with):
  x_t = (1 − sigma_t) x0 + sigma_t eps on the sampling schedule's training grid (its shift
  included), target the velocity eps − x0 (``Discretization.denoising_target``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DenoisingLoss"]


def _add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 + sigma eps, sigma (n,)."""
    return x0 + sigma[:, None, None, None] * eps


def _eps(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps


class DenoisingLoss:
    """``loss(cond) -> scalar`` of the model's eps error on ``images`` at noise levels that are
    redrawn every ``resample_every`` calls (timesteps uniform on the model's training grid).

    Args:
        model: the engine under attack (``denoiser``, ``network``, ``encode_first_stage``; for a
            continuous denoiser, ``make_sampler`` whose discretization has ``t_to_sigma``).
        images: (N, 3, H, W) in [-1, 1]; each call uses ``batch_size`` of them.
        batch_size: images per call.
        resample_every: calls between new timesteps, noise and images (UnlearnDiffAtk: 40).
        generator: the CPU generator of every draw.
    """

    def __init__(self, model, images: torch.Tensor, batch_size: int, resample_every: int, generator: torch.Generator):
        denoiser = model.denoiser
        if hasattr(denoiser, "idx_to_sigma"):
            self.num_timesteps, self.t_to_sigma = int(denoiser.num_idx), denoiser.idx_to_sigma
            self.add_noise, self.denoising_target = _add_noise, _eps
        else:
            schedule = getattr(model.make_sampler(), "discretization", None)
            if not hasattr(schedule, "t_to_sigma") or not hasattr(schedule, "num_timesteps"):
                raise ValueError(
                    f"the denoising loss needs a DiscreteDenoiser or a sampling schedule with training timesteps "
                    f"(t_to_sigma), got {type(denoiser).__name__} and {type(schedule).__name__}"
                )
            self.num_timesteps, self.t_to_sigma = int(schedule.num_timesteps), schedule.t_to_sigma
            self.add_noise, self.denoising_target = schedule.add_noise, schedule.denoising_target
        self.model, self.generator = model, generator
        with torch.no_grad():
            self.x0 = model.encode_first_stage(images.to(model.device))  # (N, C, h, w)
        self.batch_size, self.resample_every = min(batch_size, self.x0.shape[0]), resample_every
        self.calls = 0
        self._draw()

    def _draw(self) -> None:
        g, n = self.generator, self.batch_size
        pick = torch.randperm(self.x0.shape[0], generator=g)[:n]
        t = torch.randint(0, self.num_timesteps, (n,), generator=g)
        self.sigma = self.t_to_sigma(t.to(self.model.device)).float()  # (n,)
        eps = torch.randn(self.x0[pick].shape, generator=g).to(self.model.device)  # (n, C, h, w)
        self.x_t = self.add_noise(self.x0[pick], eps, self.sigma)
        self.target = self.denoising_target(self.x0[pick], eps).float()  # what predict_eps should give

    def __call__(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """``cond``: the conditioning of one prompt (batch 1) or of ``batch_size`` prompts."""
        if self.calls and self.calls % self.resample_every == 0:
            self._draw()
        self.calls += 1
        n = self.x_t.shape[0]
        cond = {k: v.expand(n, *v.shape[1:]) if torch.is_tensor(v) and v.shape[0] == 1 else v for k, v in cond.items()}
        eps_pred = self.model.denoiser.predict_eps(self.model.sampling_network, self.x_t, self.sigma, cond)
        return F.mse_loss(eps_pred.float(), self.target)
