"""DMD2's guidance module: the frozen teacher ("real" score), the critic ("fake" score)
and the optional GAN classifier head on the critic's bottleneck features.

It owns every score computation of DMD2 (official ``SDGuidance``) in the engine's sigma
space, with the engine's denoiser (so eps-, v- and x0-models all work): noise levels are
DDPM timesteps t mapped to sigma by the `DiscreteDenoiser`, x_t = x + sigma * eps, and the
x0 predictions μ_real (CFG ``real_guidance_scale``) and μ_fake (CFG ``fake_guidance_scale``,
1 in DMD2) feed the pure losses of `unlearn.objectives.dmd2`.

The teacher is registered once, as the engine's ``network``; this module only holds a
reference to it (`ModuleRef`), so the teacher appears once in state dicts, is moved by
the engine, and never gets an optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from unlearn.diffusion.guiders import VanillaCFG
from unlearn.diffusion.parameterization import append_dims
from unlearn.objectives.dmd2 import (
    distribution_matching_grad,
    distribution_matching_loss,
    fake_score_loss,
    gan_critic_loss,
    gan_generator_loss,
)

__all__ = ["DMD2Guidance", "BottleneckFeatures", "ClassifierHead", "ModuleRef"]

Cond = Mapping[str, Any]


@dataclass(frozen=True)
class ModuleRef:
    """A reference to a module owned elsewhere, which `nn.Module` does not register as a child."""

    module: nn.Module


class _FeaturesReady(Exception):
    """Raised by the feature hook to end the forward at the bottleneck (the decoder is not needed)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


class BottleneckFeatures:
    """A forward hook on one module (the UNet's ``mid_block``) that returns its output.

    ``features(fn, *args)`` runs ``fn(*args)`` (a forward of the network) and returns the
    module's output (B, C, h, w); the forward stops there, so the decoder half never runs
    (DMD2's ``classify_forward`` does the same by rewriting the UNet's forward). Outside
    ``features`` the hook does nothing. ``remove()`` unregisters it.
    """

    def __init__(self, network: nn.Module, module_name: str):
        try:
            module = network.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"gan_feature_module: {type(network).__name__} has no submodule {module_name!r}") from None
        self.module_name = module_name
        self._armed = False
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed:
            raise _FeaturesReady(output[0] if isinstance(output, (tuple, list)) else output)

    def features(self, fn: Callable[..., Any], *args: Any) -> torch.Tensor:
        self._armed = True
        try:
            fn(*args)
        except _FeaturesReady as ready:
            return ready.features
        finally:
            self._armed = False
        raise ValueError(f"gan_feature_module: {self.module_name!r} did not run during the critic's forward")

    def remove(self) -> None:
        self._handle.remove()


class ClassifierHead(nn.Sequential):
    """Bottleneck features (B, C, h, w) -> realism logit (B,): a strided 4x4 conv, GroupNorm,
    SiLU, global average pool and a 1x1 conv (DMD2's ``cls_pred_branch``, resolution-free)."""

    def __init__(self, channels: int):
        groups = math.gcd(32, channels)
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=4, stride=2, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.float()).flatten()  # (B,)


class DMD2Guidance(nn.Module):
    """Teacher + critic (+ classifier head): the scores and losses of DMD2.

    Args:
        teacher: the frozen teacher network (held by reference, see `ModuleRef`).
        critic: the trainable fake-score network, initialised from the teacher.
        denoiser: the engine's `DiscreteDenoiser` (``idx_to_sigma``, ``num_idx``).
        real_guidance_scale / fake_guidance_scale: CFG scales of μ_real / μ_fake.
        min_step / max_step: DDPM timestep range of the distribution-matching noise (inclusive).
        gan_feature_module: module of ``critic`` whose output feeds the classifier head;
            None: no GAN.
        gan_feature_channels: that module's output channels (default: the UNet's widest block).
        gan_max_step: the classifier sees x + sigma_t eps with t uniform in [0, gan_max_step]
            (0: the clean image at the smallest training sigma, DMD2's ``cls_on_clean_image``).
    """

    def __init__(
        self,
        teacher: nn.Module,
        critic: nn.Module,
        denoiser: nn.Module,
        real_guidance_scale: float,
        fake_guidance_scale: float = 1.0,
        min_step: int = 20,
        max_step: int = 980,
        gan_feature_module: str | None = None,
        gan_feature_channels: int | None = None,
        gan_max_step: int = 0,
    ):
        super().__init__()
        if not hasattr(denoiser, "idx_to_sigma"):
            raise ValueError("denoiser_config: DMD2 needs a DiscreteDenoiser (DDPM timesteps), "
                             f"got {type(denoiser).__name__}")
        T = int(denoiser.num_idx)
        if not 0 <= min_step <= max_step < T:
            raise ValueError(f"min_step, max_step: need 0 <= min_step <= max_step < {T}, got {min_step}, {max_step}")
        if not 0 <= gan_max_step < T:
            raise ValueError(f"gan_max_step: expected an integer in [0, {T}), got {gan_max_step}")
        self.teacher_ref = ModuleRef(teacher)
        self.critic = critic
        self.denoiser_ref = ModuleRef(denoiser)  # the engine owns the denoiser too
        self.real_cfg = VanillaCFG(real_guidance_scale)
        self.fake_cfg = VanillaCFG(fake_guidance_scale)
        self.num_timesteps, self.min_step, self.max_step, self.gan_max_step = T, min_step, max_step, gan_max_step
        self.features: BottleneckFeatures | None = None
        self.cls_head: ClassifierHead | None = None
        if gan_feature_module is not None:
            self.features = BottleneckFeatures(critic, gan_feature_module)
            channels = gan_feature_channels or _widest_block(critic)
            self.cls_head = ClassifierHead(channels)

    # ------------------------------------------------------------------ scores
    @property
    def teacher(self) -> nn.Module:
        return self.teacher_ref.module

    @property
    def denoiser(self) -> nn.Module:
        return self.denoiser_ref.module

    def sigmas(self, t: torch.Tensor) -> torch.Tensor:
        """DDPM timesteps (B,) long -> training sigmas (B,)."""
        return self.denoiser.idx_to_sigma(t)

    def _random_t(self, n: int, low: int, high: int, device: torch.device) -> torch.Tensor:
        return torch.randint(low, high + 1, (n,)).to(device)  # drawn on the CPU: device-independent

    def _guided_x0(self, network: nn.Module, cfg: VanillaCFG, x: torch.Tensor, sigma: torch.Tensor,
                   cond: Cond, uc: Cond | None) -> torch.Tensor:
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

    # ------------------------------------------------------------------ losses
    def distribution_matching_loss(self, x_hat: torch.Tensor, cond: Cond, uc: Cond | None
                                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DM loss of generator samples x̂ (B, C, H, W), t uniform in [min_step, max_step]."""
        t = self._random_t(x_hat.shape[0], self.min_step, self.max_step, x_hat.device)
        sigma = self.sigmas(t)  # (B,)
        x_t = x_hat.detach() + append_dims(sigma, x_hat.ndim) * torch.randn_like(x_hat)
        x0_real = self.real_x0(x_t, sigma, cond, uc)
        x0_fake = self.fake_x0(x_t, sigma, cond, uc)
        grad = distribution_matching_grad(x_hat, x0_real, x0_fake)
        loss = distribution_matching_loss(x_hat, grad)
        return loss, {"loss_dm": loss.detach(), "dm_grad_norm": grad.norm().detach()}

    def critic_denoising_loss(self, x_hat: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The critic's eps loss on sg(x̂) (B, C, H, W), t uniform in [0, T)."""
        x0 = x_hat.detach()
        sigma = self.sigmas(self._random_t(x0.shape[0], 0, self.num_timesteps - 1, x0.device))
        eps = torch.randn_like(x0)
        x_t = x0 + append_dims(sigma, x0.ndim) * eps
        return fake_score_loss(self.denoiser.predict_eps(self.critic, x_t, sigma, cond), eps)

    def logits(self, x0: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Realism logits (B,) of clean images x0 (B, C, H, W), noised to t <= gan_max_step."""
        if self.features is None or self.cls_head is None:
            raise ValueError("gan_classifier is off: the guidance has no classifier head")
        sigma = self.sigmas(self._random_t(x0.shape[0], 0, self.gan_max_step, x0.device))
        x_t = x0 + append_dims(sigma, x0.ndim) * torch.randn_like(x0)
        feats = self.features.features(self.denoiser, self.critic, x_t, sigma, cond)
        return self.cls_head(feats)

    def generator_gan_loss(self, x_hat: torch.Tensor, cond: Cond) -> torch.Tensor:
        return gan_generator_loss(self.logits(x_hat, cond))

    def critic_gan_loss(self, x_real: torch.Tensor, cond_real: Cond, x_hat: torch.Tensor, cond: Cond
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_real = self.logits(x_real.detach(), cond_real)
        logits_fake = self.logits(x_hat.detach(), cond)
        logs = {"d_real": torch.sigmoid(logits_real).mean().detach(),
                "d_fake": torch.sigmoid(logits_fake).mean().detach()}
        return gan_critic_loss(logits_real, logits_fake), logs

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The critic's trainable weights (all, or its LoRA) and the classifier head."""
        return [p for p in self.parameters() if p.requires_grad]


def _widest_block(network: nn.Module) -> int:
    config = getattr(getattr(network, "unet", network), "config", None)
    widths = getattr(config, "block_out_channels", None) if config is not None else None
    if not widths:
        raise ValueError("gan_feature_channels: cannot infer the bottleneck width of "
                         f"{type(network).__name__}; set model.params.gan_feature_channels")
    return int(widths[-1])
