"""The losses of DMD2 (Yin et al., "Improved Distribution Matching Distillation for Fast
Image Synthesis", NeurIPS 2024), as pure functions of tensors.

Notation (sigma space, x_t = x + sigma * eps):

* x̂ = G(z): a generator sample (B, C, H, W);
* μ_real(x_t, t): the frozen teacher's x0 prediction with classifier-free guidance;
* μ_fake(x_t, t): the critic's ("fake score") x0 prediction, trained on sg(x̂).

Distribution matching (DMD, Yin et al. CVPR 2024, Eq. 7 and 8): the gradient of the
reverse KL with respect to x̂ is (s_fake - s_real) at x_t, i.e. proportional to
μ_fake - μ_real, weighted per sample by 1 / mean|x̂ - μ_real|. DMD2's official code
applies it through a surrogate loss 0.5 * ||x̂ - sg(x̂ - grad)||² (mean over all elements),
whose gradient is grad / numel(x̂). The critic learns the generator's distribution with
the ordinary eps-prediction loss; the optional GAN terms (DMD2, Sec. 4.3) are
non-saturating softplus losses on a classifier head over the critic's features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "distribution_matching_grad",
    "distribution_matching_loss",
    "fake_score_loss",
    "gan_generator_loss",
    "gan_critic_loss",
]


def distribution_matching_grad(x_hat: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """grad = (μ_fake - μ_real) / mean|x̂ - μ_real| per sample (DMD Eq. 8), NaNs zeroed.

    x_hat, x0_real, x0_fake: (B, C, H, W) -> grad (B, C, H, W), in float32, no graph.
    """
    x_hat, x0_real, x0_fake = (t.detach().float() for t in (x_hat, x0_real, x0_fake))
    dims = tuple(range(1, x_hat.ndim))
    weight = (x_hat - x0_real).abs().mean(dim=dims, keepdim=True)  # (B, 1, 1, 1)
    return torch.nan_to_num((x0_fake - x0_real) / weight)


def distribution_matching_loss(x_hat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * MSE(x̂, sg(x̂ - grad)), a scalar whose gradient in x̂ is ``grad / x_hat.numel()``.

    x_hat: (B, C, H, W) with grad; grad: (B, C, H, W) from `distribution_matching_grad`.
    """
    target = (x_hat.detach().float() - grad).detach()
    return 0.5 * F.mse_loss(x_hat.float(), target, reduction="mean")


def fake_score_loss(eps_fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The critic's denoising loss on generator samples: mean (ε_fake(x_t) - ε)² (DMD2's ``loss_fake``).

    eps_fake, eps: (B, C, H, W) -> scalar.
    """
    return (eps_fake.float() - eps.float()).pow(2).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(x̂)); logits_fake: (B,) -> scalar."""
    return F.softplus(-logits_fake.float()).mean()


def gan_critic_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Classifier loss softplus(-D(x_real)) + softplus(D(sg(x̂))); logits: (B,) each -> scalar."""
    return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()
