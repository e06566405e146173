"""DMD2's GAN head on the joint-attention transformers (tiny SD3 and Flux, random weights): the
classifier reads the critic's image tokens after its middle block, its losses are finite, and both
the classifier and, through the critic's features, the generator's sample receive gradients."""

from __future__ import annotations

import pytest
import torch

from unlearn.diffusion.denoiser import Denoiser
from unlearn.diffusion.discretization import FlowMatchDiscretization
from unlearn.networks import DiffusersFluxTransformer, DiffusersSD3Transformer
from unlearn.networks.lora import full_copy
from unlearn.objectives.dmd2 import DMD2Objective

from .test_networks_mmdit import TINY, TINY_FLUX

WIDTH = {"sd3": 16, "flux": 32}  # heads x head dim of the tiny transformers


def _objective(arch: str, **params) -> DMD2Objective:
    torch.manual_seed(0)
    if arch == "sd3":
        teacher = DiffusersSD3Transformer(config=TINY)
    else:
        teacher = DiffusersFluxTransformer(config=TINY_FLUX)
    return DMD2Objective(
        teacher=teacher.requires_grad_(False),
        critic=full_copy(teacher),
        denoiser=Denoiser({"target": "unlearn.diffusion.scalings.FlowScaling"}),
        discretization=FlowMatchDiscretization(shift=3.0),
        real_guidance_scale=1.0,
        gan_classifier=True,
        **params,
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x_hat, real = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 16, 8, 8, generator=g)
    cond = {"crossattn": torch.randn(2, 10, 24, generator=g), "vector": torch.randn(2, 12, generator=g)}
    return x_hat, real, cond


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_classifier_trains_on_the_critics_image_tokens(arch):
    objective = _objective(arch, gan_critic_loss_weight=1.0)
    x_hat, real, cond = _batch()
    assert objective.features.module_name == "transformer.transformer_blocks.0"
    assert objective.cls_head[0].in_channels == WIDTH[arch]
    feats = objective.features.features(objective.denoiser, objective.critic, x_hat, torch.tensor([0.3, 0.9]), cond)
    assert feats.shape == (2, WIDTH[arch], 4, 4)  # 8 x 8 latents: a 4 x 4 grid of 2 x 2 patches

    torch.manual_seed(2)
    out = objective.critic_loss(x_hat, cond, (real, cond))
    loss_d = out.logs["loss_gan_d"]
    assert torch.isfinite(loss_d) and loss_d > 0.1  # two softplus terms near log 2 each at the start
    out.loss.backward()
    head = list(objective.cls_head.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in head)
    block = objective.critic.transformer.transformer_blocks[0]
    assert block.attn.to_q.weight.grad.abs().sum() > 0  # the GAN loss also trains the critic's first half

    before = [p.detach().clone() for p in head]
    torch.optim.Adam(objective.trainable_parameters(), lr=1e-3).step()
    assert all(not torch.equal(b, p) for b, p in zip(before, head))


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_the_generator_gets_the_gan_gradient_through_the_critic(arch):
    objective = _objective(arch, dm_loss_weight=0.0, gan_loss_weight=1.0)  # the GAN term alone
    x_hat, _, cond = _batch()
    x_hat.requires_grad_(True)
    torch.manual_seed(2)
    out = objective.generator_loss(x_hat, cond, None)
    loss_g = out.logs["loss_gan_g"]
    assert torch.isfinite(loss_g) and loss_g > 0.1 and torch.equal(out.loss, loss_g)
    out.loss.backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_gradient_checkpointing_gives_the_same_classifier_gradients(arch):
    """The feature hook ends the forward inside a checkpointed block; its recomputation in the
    backward runs the hook disarmed, so the gradients are those without checkpointing."""
    grads = []
    for checkpointing in (False, True):
        objective = _objective(arch, gan_critic_loss_weight=1.0)
        objective.critic.set_gradient_checkpointing(checkpointing)
        objective.critic.train()
        x_hat, real, cond = _batch()
        torch.manual_seed(2)
        objective.critic_loss(x_hat, cond, (real, cond)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in objective.trainable_parameters() if p.grad is not None]))
    assert grads[0].numel() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)
