"""DiffusersSD3Transformer and DiffusersFluxTransformer: the engine's network call shape over diffusers'
SD3Transformer2DModel and FluxTransformer2DModel (packing, RoPE ids, guidance embedding)."""

from __future__ import annotations

import pytest
import torch

from unlearn.diffusion.denoiser import Denoiser
from unlearn.networks import DiffusersFluxTransformer, DiffusersSD3Transformer
from unlearn.networks.flux import latent_image_ids, pack_latents, unpack_latents

TINY = dict(
    sample_size=8,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=24,
    caption_projection_dim=16,
    pooled_projection_dim=12,
    pos_embed_max_size=16,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DiffusersSD3Transformer(config=TINY).eval()


def _inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 8, 8, generator=g)
    cond = {"crossattn": torch.randn(batch, 10, 24, generator=g), "vector": torch.randn(batch, 12, generator=g)}
    return x, cond


def test_forward_is_the_transformer_call(net):
    x, cond = _inputs()
    t = torch.tensor([250.0, 900.0])
    with torch.no_grad():
        ours = net(x, t, cond)
        theirs = net.transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=cond["crossattn"], pooled_projections=cond["vector"]
        ).sample
        scalar = net(x, torch.tensor(250.0), cond)
        other_text = net(x, t, {**cond, "vector": cond["vector"] + 1})
    assert ours.shape == x.shape and torch.equal(ours, theirs)
    assert torch.equal(scalar[0], ours[0])  # a 0-dim timestep is broadcast
    assert not torch.allclose(other_text, ours)  # the pooled vector is used
    assert net.in_channels == 16 and net.joint_attention_dim == 24


def test_denoiser_passes_timestep_1000_sigma(net):
    x, cond = _inputs()
    sigma = torch.tensor([0.25, 0.9])
    denoiser = Denoiser({"target": "unlearn.diffusion.scalings.FlowScaling"})
    with torch.no_grad():
        v = net(x, 1000 * sigma, cond)
        torch.testing.assert_close(denoiser(net, x, sigma, cond), x - sigma.view(-1, 1, 1, 1) * v)
        torch.testing.assert_close(denoiser.network_output(net, x, sigma, cond), v)


def test_gradient_checkpointing_gives_the_same_gradients():
    x, cond = _inputs()
    t = torch.tensor([100.0, 600.0])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        net = DiffusersSD3Transformer(config=TINY, gradient_checkpointing=checkpointing).train()
        net(x, t, cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    assert grads[0].numel() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_half_weights_return_float32(net):
    x, cond = _inputs(1)
    half = DiffusersSD3Transformer(config=TINY)
    half.load_state_dict(net.state_dict())
    half.to(torch.bfloat16)
    with torch.no_grad():
        out, ref = half(x, torch.tensor([500.0]), cond), net(x, torch.tensor([500.0]), cond)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_loading_and_errors(net, tmp_path):
    net.transformer.save_pretrained(tmp_path / "pipe" / "transformer")
    loaded = DiffusersSD3Transformer(pretrained_path=str(tmp_path / "pipe"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    with pytest.raises(ValueError, match="exactly one of pretrained_path"):
        DiffusersSD3Transformer()
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub id"):
        DiffusersSD3Transformer(pretrained_path="stabilityai/stable-diffusion-3-medium-diffusers")
    with pytest.raises(FileNotFoundError, match="has no transformer/config.json"):
        DiffusersSD3Transformer(pretrained_path=str(tmp_path))
    file = tmp_path / "sd3_medium.safetensors"
    file.write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"is a single checkpoint file: set single_file_config \(model configs: model_"
    ):
        DiffusersSD3Transformer(pretrained_path=str(file))
    x, cond = _inputs()
    with pytest.raises(ValueError, match=r"needs cond\['vector'\]"):
        net(x, torch.tensor(1.0), {"crossattn": cond["crossattn"]})


TINY_FLUX = dict(
    patch_size=1,
    in_channels=16 * 4,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    pooled_projection_dim=12,
    guidance_embeds=True,
    axes_dims_rope=[4, 6, 6],
)


def test_flux_packing_and_ids():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = pack_latents(x)
    assert tokens.shape == (2, 2 * 3, 12)
    # token (row 1, col 2) holds the 2 x 2 patch x[:, :, 2:4, 4:6], channel-major
    torch.testing.assert_close(tokens[:, 1 * 3 + 2], x[:, :, 2:4, 4:6].reshape(2, 12))
    assert torch.equal(unpack_latents(tokens, 4, 6), x)
    ids = latent_image_ids(2, 3)
    assert ids.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]


def test_flux_forward_is_the_transformer_call_on_packed_latents():
    torch.manual_seed(0)
    net = DiffusersFluxTransformer(config=TINY_FLUX, guidance=3.5).eval()
    x, cond = _inputs()
    cond = {"crossattn": cond["crossattn"], "vector": cond["vector"]}
    t = torch.tensor([250.0, 900.0])
    with torch.no_grad():
        ours = net(x, t, cond)
        theirs = net.transformer(
            hidden_states=pack_latents(x),
            timestep=t / 1000,
            guidance=torch.full((2,), 3.5),
            pooled_projections=cond["vector"],
            encoder_hidden_states=cond["crossattn"],
            txt_ids=torch.zeros(10, 3),
            img_ids=latent_image_ids(4, 4),
        ).sample
        other_guidance = net(x, t, {**cond, "guidance": torch.full((2,), 1.0)})
    assert net.in_channels == 16 and ours.shape == x.shape
    assert torch.equal(ours, unpack_latents(theirs, 8, 8))
    assert not torch.allclose(other_guidance, ours)  # the guidance embedding is read, and overridable
    with pytest.raises(ValueError, match="packs 2 x 2 latent patches"):
        net(torch.randn(1, 16, 7, 8), t[:1], {k: v[:1] for k, v in cond.items()})
    with pytest.raises(ValueError, match=r"needs cond\['vector'\]"):
        net(x, t, {"crossattn": cond["crossattn"]})
    # schnell-like: no guidance embedding, the guidance is not passed
    torch.manual_seed(0)
    schnell = DiffusersFluxTransformer(config={**TINY_FLUX, "guidance_embeds": False}).eval()
    with torch.no_grad():
        out = schnell(x, t, {**cond, "guidance": torch.full((2,), 9.0)})
        ref = schnell.transformer(
            hidden_states=pack_latents(x), timestep=t / 1000, pooled_projections=cond["vector"],
            encoder_hidden_states=cond["crossattn"], txt_ids=torch.zeros(10, 3), img_ids=latent_image_ids(4, 4),
        ).sample  # fmt: skip
    assert torch.equal(out, unpack_latents(ref, 8, 8))


# ------------------------------------------------------------------ bottleneck (DMD2's GAN features)
def _tiny(arch: str, **config):
    torch.manual_seed(0)
    if arch == "sd3":
        return DiffusersSD3Transformer(config={**TINY, **config}).eval()
    return DiffusersFluxTransformer(config={**TINY_FLUX, **config}).eval()


@pytest.mark.parametrize(
    "arch, layers, module",
    [
        ("sd3", dict(num_layers=3), "transformer.transformer_blocks.1"),
        ("flux", dict(num_layers=2, num_single_layers=1), "transformer.transformer_blocks.1"),
        ("flux", dict(num_layers=1, num_single_layers=2), "transformer.single_transformer_blocks.0"),
    ],
)
def test_bottleneck_is_the_image_stream_after_the_middle_block(arch, layers, module):
    from unlearn.networks.classifier_head import BottleneckFeatures
    from unlearn.networks.mmdit import token_map

    net = _tiny(arch, **layers)
    assert net.bottleneck_module == module  # of 3 blocks the 2nd; Flux counts double- then single-stream blocks
    assert net.bottleneck_channels == (16 if arch == "sd3" else 32)  # heads x head dim
    x, cond = _inputs()
    cond = {k: cond[k] for k in ("crossattn", "vector")}
    t = torch.tensor([250.0, 900.0])
    seen = {}
    block = net.get_submodule(module)
    watch = block.register_forward_hook(lambda m, a, out: seen.update(image=out[1]))  # (text, image) tokens
    tail = net.transformer.proj_out.register_forward_hook(lambda m, a, out: seen.update(tail=True))
    features = BottleneckFeatures(net, None)
    with torch.no_grad():
        feats = features.features(net, x, t, cond)
        assert "tail" not in seen  # the forward stopped at the bottleneck
        assert feats.shape == (2, net.bottleneck_channels, 4, 4)  # 8 x 8 latents: a 4 x 4 grid of 2 x 2 patches
        assert torch.equal(feats, token_map(seen["image"], 4, 4))
        out = net(x, t, cond)  # outside `features` the hooks do nothing
    features.remove()
    watch.remove()
    tail.remove()
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), out)


@pytest.mark.parametrize("arch, embedder", [("sd3", "transformer.pos_embed"), ("flux", "transformer.x_embedder")])
def test_bottleneck_tokens_land_on_their_patch(arch, embedder):
    """Read at the (patch-local) token embedding of a non-square latent, a change in one 2 x 2
    latent patch changes the feature map at that patch's grid position only."""
    from unlearn.networks.classifier_head import BottleneckFeatures

    net = _tiny(arch)
    features = BottleneckFeatures(net, embedder)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 8, 12, generator=g)
    cond = {"crossattn": torch.randn(1, 10, 24, generator=g), "vector": torch.randn(1, 12, generator=g)}
    t = torch.tensor([500.0])
    with torch.no_grad():
        before = features.features(net, x, t, cond)
        x[:, :, 2:4, 8:10] += 1.0  # grid row 1, column 4
        diff = (features.features(net, x, t, cond) - before).abs().amax(dim=1)[0]  # (4, 6)
    assert before.shape == (1, net.bottleneck_channels, 4, 6)
    assert diff[1, 4] > 1e-3 and diff.sum() == diff[1, 4]


def test_token_map_is_the_inverse_of_flattening_a_grid():
    from unlearn.networks.mmdit import token_map

    grid = torch.randn(2, 5, 3, 4)  # (B, D, h, w)
    assert torch.equal(token_map(grid.flatten(2).transpose(1, 2), 3, 4), grid)
    # Flux's packed tokens on their grid are the latent's 2 x 2 space-to-depth
    x = torch.randn(2, 3, 4, 6)
    assert torch.equal(token_map(pack_latents(x), 2, 3), torch.nn.functional.pixel_unshuffle(x, 2))
    with pytest.raises(ValueError, match="expected 3 x 3 = 9 image tokens, got 12"):
        token_map(grid.flatten(2).transpose(1, 2), 3, 3)
