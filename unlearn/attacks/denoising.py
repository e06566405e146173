"""The attacked model as its own classifier: its denoising loss on images of the concept.

UnlearnDiffAtk (Zhang et al., ECCV 2024) and concept inversion (Pham et al., ICLR 2024) search
for the prompt under which the erased model best denoises images of the concept:
E_{t, eps} ‖eps − eps_θ(x_t, t | c′)‖², x_t = x0 + sigma_t eps, x0 the images in the model's
space. The model's own eps estimate (``Denoiser.predict_eps``) makes this work for eps- and
v-models alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DenoisingLoss"]


class DenoisingLoss:
    """``loss(cond) -> scalar`` of the model's eps error on ``images`` at noise levels that are
    redrawn every ``resample_every`` calls (DDPM timesteps uniform on the model's training grid).

    Args:
        model: the engine under attack (``denoiser``, ``network``, ``encode_first_stage``).
        images: (N, 3, H, W) in [-1, 1]; each call uses ``batch_size`` of them.
        batch_size: images per call.
        resample_every: calls between new timesteps, noise and images (UnlearnDiffAtk: 40).
        generator: the CPU generator of every draw.
    """

    def __init__(self, model, images: torch.Tensor, batch_size: int, resample_every: int, generator: torch.Generator):
        denoiser = model.denoiser
        if not hasattr(denoiser, "idx_to_sigma"):
            raise ValueError(f"the denoising loss needs a DiscreteDenoiser, got {type(denoiser).__name__}")
        self.model, self.generator = model, generator
        with torch.no_grad():
            self.x0 = model.encode_first_stage(images.to(model.device))  # (N, C, h, w)
        self.batch_size, self.resample_every = min(batch_size, self.x0.shape[0]), resample_every
        self.calls = 0
        self._draw()

    def _draw(self) -> None:
        g, n = self.generator, self.batch_size
        pick = torch.randperm(self.x0.shape[0], generator=g)[:n]
        t = torch.randint(0, int(self.model.denoiser.num_idx), (n,), generator=g)
        self.sigma = self.model.denoiser.idx_to_sigma(t.to(self.model.device)).float()  # (n,)
        self.eps = torch.randn(self.x0[pick].shape, generator=g).to(self.model.device)  # (n, C, h, w)
        self.x_t = self.x0[pick] + self.sigma[:, None, None, None] * self.eps

    def __call__(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """``cond``: the conditioning of one prompt (batch 1) or of ``batch_size`` prompts."""
        if self.calls and self.calls % self.resample_every == 0:
            self._draw()
        self.calls += 1
        n = self.x_t.shape[0]
        cond = {k: v.expand(n, *v.shape[1:]) if torch.is_tensor(v) and v.shape[0] == 1 else v for k, v in cond.items()}
        eps_pred = self.model.denoiser.predict_eps(self.model.sampling_network, self.x_t, self.sigma, cond)
        return F.mse_loss(eps_pred.float(), self.eps)
