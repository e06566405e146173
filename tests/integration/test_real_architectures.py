"""Training and sampling on the real SD 1.x / SD 2.x / SDXL architectures (tiny random weights):
gradient checkpointing, bf16 / fp16 autocast and half-precision weights."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.integration.tiny_pipelines import IMAGE_SIZE

ARCHS = ["sd15", "sd21", "sdxl"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(arch):
    g = torch.Generator().manual_seed(0)
    batch = {"jpg": torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 2 - 1, "txt": ["a cat", "a red car"]}
    if arch == "sdxl":
        size = torch.full((2, 2), float(IMAGE_SIZE))
        batch.update(original_size_as_tuple=size, crop_coords_top_left=torch.zeros(2, 2), target_size_as_tuple=size)
    return batch


def _loss_and_grads(model, batch, autocast_dtype=None):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the loss draws sigma and noise from the global generator
    with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = model.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.network.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(arch, tiny_trainable_engines):
    model = tiny_trainable_engines[arch]  # built with model.params.gradient_checkpointing=true
    assert model.network.unet.is_gradient_checkpointing
    batch = _batch(arch)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, batch)
    model.network.set_gradient_checkpointing(False)
    try:
        loss, grads = _loss_and_grads(model, batch)
    finally:
        model.network.set_gradient_checkpointing(True)
    assert torch.isfinite(loss) and torch.allclose(loss, loss_ckpt, rtol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(model.network.parameters()))
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)
    assert not any(p.requires_grad for p in model.first_stage.parameters())  # VAE frozen
    assert not any(p.requires_grad for p in model.conditioner.parameters())  # text encoders frozen


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_trains_and_samples(arch, tiny_trainable_engines):
    model = tiny_trainable_engines[arch]
    batch = _batch(arch)
    loss32, _ = _loss_and_grads(model, batch)
    loss16, grads = _loss_and_grads(model, batch, torch.bfloat16)
    assert torch.isfinite(loss16) and abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    assert all(torch.isfinite(g).all() for g in grads.values())
    sampler = model.make_sampler(None, 3, 5.0)
    reference = model.generate(["a cat"], seeds=[1], sampler=sampler)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.generate(["a cat"], seeds=[1], sampler=sampler)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert (images - reference).abs().mean() < 0.05


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
@pytest.mark.parametrize("arch", ARCHS)
def test_half_precision_weights_sample_like_float32(arch, dtype, tol, tiny_trainable_engines):
    """Weights in bf16 / fp16 (Lightning's *-true precision): sampler state and sigmas stay float32."""
    reference = tiny_trainable_engines[arch]
    model = copy.deepcopy(reference).to(dtype)
    assert model.network.unet.dtype == dtype and model.denoiser.sigmas.dtype == torch.float32
    assert torch.equal(model.denoiser.sigmas, reference.denoiser.sigmas)  # not rounded to `dtype`
    sampler = reference.make_sampler(None, 3, 5.0)
    ref = reference.generate(["a cat"], seeds=[1], sampler=sampler, decode=False)
    latents = model.generate(["a cat"], seeds=[1], sampler=sampler, decode=False)
    assert latents.dtype == torch.float32
    assert (latents - ref).abs().max() < tol * ref.abs().max()
    images = model.generate(["a cat"], seeds=[1], sampler=sampler)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert model.first_stage.vae.dtype == dtype  # upcast for decoding only


def test_vae_runs_in_float32_under_fp16_only(tiny_trainable_engines):
    """SDXL's VAE config asks for force_upcast: fp16 autocast decodes in float32, bf16 does not."""
    vae = copy.deepcopy(tiny_trainable_engines["sdxl"].first_stage)
    assert vae.upcast
    z = torch.randn(1, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=torch.Generator().manual_seed(0))
    reference = vae.decode(z)
    with torch.autocast("cpu", dtype=torch.float16):
        upcast = vae.decode(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = vae.decode(z)
    torch.testing.assert_close(upcast, reference)
    assert (bf16 - reference).abs().max() > 1e-4
    vae.upcast = False
    with torch.autocast("cpu", dtype=torch.float16):
        assert (vae.decode(z) - reference).abs().max() > 1e-5
