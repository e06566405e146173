"""Attention-head masks on joint attention (SD3's MMDiT, Flux's double- and single-stream blocks):
a head switched off is exactly the head's input channels of the output projections zeroed."""

from __future__ import annotations

import pytest
import torch

from unlearn.hooks import AttentionHeadHooker, FeedForwardHooker, MaskManager, NormHooker

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS, HEAD_DIM = 2, 8


def _sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=4,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=12,
        caption_projection_dim=16,
        pooled_projection_dim=6,
        pos_embed_max_size=8,
    ).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(2, 4, 4, 4, generator=g),
        encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
        pooled_projections=torch.randn(2, 6, generator=g),
        timestep=torch.tensor([800.0, 200.0]),
    )
    return model, inputs


def _flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=8,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=12,
        pooled_projection_dim=6,
        guidance_embeds=False,
        axes_dims_rope=[2, 2, 4],
    ).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(2, 4, 8, generator=g),
        encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
        pooled_projections=torch.randn(2, 6, generator=g),
        timestep=torch.tensor([0.8, 0.2]),
        img_ids=torch.randn(4, 3, generator=g),
        txt_ids=torch.zeros(5, 3),
    )
    return model, inputs


def _run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _zero_head_inputs(model, name: str, head: int) -> None:
    """What head ``head`` of attention ``name`` switched off means: the output projections never
    read its channels (for a single-stream block, the attention part of the block's proj_out)."""
    attn = model.get_submodule(name)
    cols = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    with torch.no_grad():
        if getattr(attn, "pre_only", False):
            model.get_submodule(name.rsplit(".", 1)[0]).proj_out.weight[:, cols] = 0
            return
        attn.to_out[0].weight[:, cols] = 0
        if getattr(attn, "to_add_out", None) is not None:
            attn.to_add_out.weight[:, cols] = 0


@pytest.mark.parametrize(
    "build, name",
    [
        (_sd3, "transformer_blocks.0.attn"),  # joint: both streams projected out
        (_sd3, "transformer_blocks.1.attn"),  # the last block: context_pre_only, no to_add_out
        (_flux, "transformer_blocks.0.attn"),  # Flux double-stream
        (_flux, "single_transformer_blocks.0.attn"),  # Flux single-stream: no output projection
    ],
)
def test_a_head_off_is_its_output_channels_never_read(build, name):
    model, inputs = build()
    original = _run(model, inputs)
    hooker = AttentionHeadHooker(module_regex=rf"^{name}$", strategy="fixed", init_value=1.0)
    manager = MaskManager([hooker]).register(model)
    assert hooker.names() == [name] and hooker.masks()[name].shape == (HEADS,)
    assert torch.equal(_run(model, inputs), original)  # a mask of ones changes nothing
    with torch.no_grad():
        hooker.masks()[name][1] = 0.0
    masked = _run(model, inputs)
    manager.remove()
    assert torch.equal(_run(model, inputs), original)  # removed: the model as it was
    assert (masked - original).abs().max() > 1e-4
    _zero_head_inputs(model, name, head=1)
    torch.testing.assert_close(masked, _run(model, inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [_sd3, _flux])
def test_heads_feed_forward_and_norm_channels_train_together_on_a_transformer(build):
    model, inputs = build()
    hookers = [
        AttentionHeadHooker(strategy="sigmoid", init_value=3.0),
        FeedForwardHooker(strategy="sigmoid", init_value=3.0),
        NormHooker(module_regex=r"norm1?\.norm$", strategy="sigmoid", init_value=3.0),
    ]
    MaskManager(hookers).register(model)
    attention = {n for n, m in model.named_modules() if n.endswith(".attn")}
    assert set(hookers[0].names()) == attention
    assert hookers[1].names() and hookers[2].names()
    model(**inputs, return_dict=False)[0].pow(2).mean().backward()
    for hooker in hookers:
        assert all(lam.grad is not None and lam.grad.abs().sum() > 0 for lam in hooker.masks().values())
