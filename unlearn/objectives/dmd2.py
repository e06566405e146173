"""DMD2's objective (Yin et al., "Improved Distribution Matching Distillation for Fast Image
Synthesis", NeurIPS 2024): its losses as pure functions of tensors, and `DMD2Objective`,
which owns the scores they are computed from.

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

`DMD2Objective` (official ``SDGuidance``) computes every score in the engine's sigma space
with the engine's denoiser (so eps-, v- and x0-models all work): noise levels are DDPM
timesteps t mapped to sigma by the `DiscreteDenoiser`, x_t = x + sigma * eps. The teacher is
registered once, as the engine's ``network``; the objective only holds a reference to it
(`ModuleRef`), so the teacher appears once in state dicts, is moved by the engine, and never
gets an optimizer.

On a rectified-flow model (SD3, Flux) the same losses hold with the flow's own noising,
x_t = (1 - sigma) x + sigma eps, timesteps t mapped to sigma = shift((t + 1) / T) on the
scheduler's training grid, and the critic trained as the model was: its velocity
(x_t - D(x_t)) / sigma against eps - x (`Discretization.denoising_target`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.config import non_negative_number
from unlearn.diffusion.discretization import Discretization
from unlearn.diffusion.guiders import VanillaCFG
from unlearn.diffusion.parameterization import append_dims
from unlearn.networks.classifier_head import BottleneckFeatures, ClassifierHead, bottleneck_channels
from unlearn.objectives.base import Cond, DistillationObjective, ObjectiveOutput

__all__ = [
    "DMD2Objective",
    "ModuleRef",
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


@dataclass(frozen=True)
class ModuleRef:
    """A reference to a module owned elsewhere, which `nn.Module` does not register as a child."""

    module: nn.Module


class DMD2Objective(DistillationObjective):
    """Teacher + critic (+ classifier head): the scores and losses of DMD2.

    Args (from ``objective_config``):
        real_guidance_scale / fake_guidance_scale: CFG scales of μ_real (teacher) / μ_fake (critic).
        min_step / max_step: DDPM timestep range of the distribution-matching noise (inclusive);
            None: 2% and 98% of the denoiser's T.
        dm_loss_weight: weight of the DM loss in the generator loss.
        gan_classifier: add the classifier head on the critic's ``gan_feature_module`` output;
            the critic loss then needs real images. ``gan_loss_weight`` weighs the generator's
            softplus(-D(x̂)), ``gan_critic_loss_weight`` the classifier's loss.
        gan_feature_module: module of the critic whose output feeds the classifier head; None:
            the network's bottleneck (a UNet's ``mid_block``; a transformer's middle block, whose
            image tokens are un-packed to their grid).
        gan_feature_channels: that module's output channels (default: the bottleneck's: the UNet's
            widest block, the transformer's width).
        gan_max_step: the classifier sees x + sigma_t eps with t uniform in [0, gan_max_step]
            (0: the clean image at the smallest training sigma, DMD2's ``cls_on_clean_image``).
    Runtime arguments (from the engine): ``teacher`` (frozen, held by reference), ``critic``
    (the trainable fake-score network, initialised from the teacher), ``denoiser`` (the
    engine's `DiscreteDenoiser`, or its flow denoiser), ``discretization`` (the generator's
    schedule: on a rectified flow it maps timesteps to sigma and noises x as the flow does).
    """

    def __init__(
        self,
        teacher: nn.Module,
        critic: nn.Module,
        denoiser: nn.Module,
        discretization: Discretization | None = None,
        real_guidance_scale: float = 1.75,
        fake_guidance_scale: float = 1.0,
        min_step: int | None = None,
        max_step: int | None = None,
        dm_loss_weight: float = 1.0,
        gan_classifier: bool = False,
        gan_loss_weight: float = 1e-3,
        gan_critic_loss_weight: float = 1e-2,
        gan_feature_module: str | None = None,
        gan_feature_channels: int | None = None,
        gan_max_step: int = 0,
    ):
        super().__init__()
        self.flow = bool(getattr(discretization, "rectified_flow", False))
        if not (self.flow or hasattr(denoiser, "idx_to_sigma")):
            raise ValueError(
                f"denoiser_config: DMD2 needs a DiscreteDenoiser (DDPM timesteps) or a rectified-flow schedule, "
                f"got {type(denoiser).__name__}"
            )
        self.discretization = discretization
        T = int(discretization.num_timesteps if self.flow else denoiser.num_idx)
        min_step = int(0.02 * T) if min_step is None else min_step
        max_step = int(0.98 * T) if max_step is None else max_step
        if not 0 <= min_step <= max_step < T:
            raise ValueError(f"min_step: need 0 <= min_step <= max_step < {T}, got {min_step}, {max_step}")
        if not 0 <= gan_max_step < T:
            raise ValueError(f"gan_max_step: expected an integer in [0, {T}), got {gan_max_step}")
        self.teacher_ref = ModuleRef(teacher)
        self.critic = critic
        self.denoiser_ref = ModuleRef(denoiser)  # the engine owns the denoiser too
        self.real_cfg = VanillaCFG(real_guidance_scale)
        self.fake_cfg = VanillaCFG(fake_guidance_scale)
        self.num_timesteps, self.min_step, self.max_step, self.gan_max_step = T, min_step, max_step, gan_max_step
        self.dm_loss_weight = non_negative_number(dm_loss_weight, "dm_loss_weight")
        self.gan_loss_weight = non_negative_number(gan_loss_weight, "gan_loss_weight")
        self.gan_critic_loss_weight = non_negative_number(gan_critic_loss_weight, "gan_critic_loss_weight")
        self.features: BottleneckFeatures | None = None
        self.cls_head: ClassifierHead | None = None
        if gan_classifier:
            self.features = BottleneckFeatures(critic, gan_feature_module)
            self.cls_head = ClassifierHead(gan_feature_channels or bottleneck_channels(critic))

    @property
    def gan_classifier(self) -> bool:
        return self.cls_head is not None

    @property
    def needs_real_images(self) -> bool:
        return self.gan_classifier

    # ------------------------------------------------------------------ scores
    @property
    def teacher(self) -> nn.Module:
        return self.teacher_ref.module

    @property
    def denoiser(self) -> nn.Module:
        return self.denoiser_ref.module

    def sigmas(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps (B,) long in [0, T) -> training sigmas (B,): the DDPM grid of the
        `DiscreteDenoiser`, or the flow schedule's (shifted) training grid, float32."""
        if self.flow:
            return self.discretization.t_to_sigma(t).float()
        return self.denoiser.idx_to_sigma(t)

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x at sigma (B,), as the schedule noises: x0 + sigma eps, or (1 - sigma) x0 + sigma eps on a
        rectified flow (without a schedule: the first)."""
        if self.discretization is not None:
            return self.discretization.add_noise(x0, eps, sigma)
        return x0 + append_dims(sigma, x0.ndim) * eps

    def _random_t(self, n: int, low: int, high: int, device: torch.device) -> torch.Tensor:
        return torch.randint(low, high + 1, (n,)).to(device)  # drawn on the CPU: device-independent

    def _guided_x0(
        self, network: nn.Module, cfg: VanillaCFG, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond | None
    ) -> torch.Tensor:
        x_in, sigma_in, cond_in = cfg.prepare_inputs(x, sigma, cond, uc)
        return cfg(self.denoiser(network, x_in, sigma_in, cond_in), sigma).float()

    @torch.no_grad()
    def real_x0(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond | None) -> torch.Tensor:
        """μ_real: the teacher's guided x0 at (x, sigma); (B, C, H, W), float32."""
        return self._guided_x0(self.teacher, self.real_cfg, x, sigma, cond, uc)

    @torch.no_grad()
    def fake_x0(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond | None) -> torch.Tensor:
        """μ_fake: the critic's x0 at (x, sigma); (B, C, H, W), float32."""
        return self._guided_x0(self.critic, self.fake_cfg, x, sigma, cond, uc)

    def logits(self, x0: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Realism logits (B,) of clean images x0 (B, C, H, W), noised to t <= gan_max_step."""
        if self.features is None or self.cls_head is None:
            raise ValueError("gan_classifier is off: the objective has no classifier head")
        sigma = self.sigmas(self._random_t(x0.shape[0], 0, self.gan_max_step, x0.device))
        x_t = self.noised(x0, torch.randn_like(x0), sigma)
        feats = self.features.features(self.denoiser, self.critic, x_t, sigma, cond)
        return self.cls_head(feats)

    # ------------------------------------------------------------------ losses
    def distribution_matching_loss(
        self, x_hat: torch.Tensor, cond: Cond, uc: Cond | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DM loss of generator samples x̂ (B, C, H, W), t uniform in [min_step, max_step]."""
        t = self._random_t(x_hat.shape[0], self.min_step, self.max_step, x_hat.device)
        sigma = self.sigmas(t)  # (B,)
        x_t = self.noised(x_hat.detach(), torch.randn_like(x_hat), sigma)
        x0_real = self.real_x0(x_t, sigma, cond, uc)
        x0_fake = self.fake_x0(x_t, sigma, cond, uc)
        grad = distribution_matching_grad(x_hat, x0_real, x0_fake)
        loss = distribution_matching_loss(x_hat, grad)
        return loss, {"loss_dm": loss.detach(), "dm_grad_norm": grad.norm().detach()}

    def critic_denoising_loss(self, x_hat: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The critic's denoising loss on sg(x̂) (B, C, H, W), t uniform in [0, T): its eps
        prediction against eps, or on a rectified flow its velocity against eps - x̂."""
        x0 = x_hat.detach()
        sigma = self.sigmas(self._random_t(x0.shape[0], 0, self.num_timesteps - 1, x0.device))
        eps = torch.randn_like(x0)
        x_t = self.noised(x0, eps, sigma)
        target = eps if self.discretization is None else self.discretization.denoising_target(x0, eps)
        return fake_score_loss(self.denoiser.predict_eps(self.critic, x_t, sigma, cond), target)

    def generator_loss(self, x_hat: torch.Tensor, cond: Cond, uc: Cond | None) -> ObjectiveOutput:
        """dm_loss_weight · DM loss (+ gan_loss_weight · softplus(-D(x̂)) with the GAN head)."""
        loss_dm, logs = self.distribution_matching_loss(x_hat, cond, uc)
        loss = self.dm_loss_weight * loss_dm
        if self.gan_classifier:
            loss_gan = gan_generator_loss(self.logits(x_hat, cond))
            loss = loss + self.gan_loss_weight * loss_gan
            logs["loss_gan_g"] = loss_gan.detach()
        return ObjectiveOutput(loss, logs)

    def critic_loss(
        self, x_hat: torch.Tensor, cond: Cond, real: tuple[torch.Tensor, Cond] | None = None
    ) -> ObjectiveOutput:
        """The critic's denoising loss on sg(x̂) (+ gan_critic_loss_weight · the classifier's loss
        on ``real`` images against sg(x̂))."""
        loss = self.critic_denoising_loss(x_hat.detach(), cond)
        logs = {"loss_fake": loss.detach()}
        if self.gan_classifier:
            if real is None:
                raise ValueError("gan_classifier: the critic loss needs real images")
            logits_real = self.logits(real[0].detach(), real[1])
            logits_fake = self.logits(x_hat.detach(), cond)
            loss_d = gan_critic_loss(logits_real, logits_fake)
            loss = loss + self.gan_critic_loss_weight * loss_d
            logs.update(
                loss_gan_d=loss_d.detach(),
                d_real=torch.sigmoid(logits_real).mean().detach(),
                d_fake=torch.sigmoid(logits_fake).mean().detach(),
            )
        return ObjectiveOutput(loss, logs)
