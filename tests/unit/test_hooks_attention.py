"""Attention-head masks through HeadMaskedAttnProcessor (SDPA) on diffusers Attention layers."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from tests.unit.mask_helpers import Wrapper, tiny_inputs, tiny_network  # noqa: F401
from unlearn.hooks import AttentionHeadHooker, HeadMaskedAttnProcessor, MaskManager

pytestmark = pytest.mark.usefixtures("one_thread")


def _attention(cross_dim=None):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=4, dim_head=4, cross_attention_dim=cross_dim)
    attn.set_processor(AttnProcessor2_0())
    return Wrapper(attn).eval()


def _manual(attn, x, context, keep):
    """Attention by hand with head h's output multiplied by keep[h]; x: (B, L, 16)."""
    b = x.shape[0]
    heads = lambda t: t.view(b, -1, 4, 4).transpose(1, 2)  # noqa: E731  (B, heads, L, d)
    q, k, v = heads(attn.to_q(x)), heads(attn.to_k(context)), heads(attn.to_v(context))
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # scale 1/sqrt(d), d = 4
    out = (w @ v) * keep.view(1, 4, 1, 1)
    return attn.to_out[0](out.transpose(1, 2).reshape(b, -1, 16))


@pytest.mark.parametrize("cross", [False, True])
def test_head_masks_all_ones_identical_and_one_head_off_matches_manual(cross):
    model = _attention(cross_dim=8 if cross else None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 16, generator=g)
    context = torch.randn(2, 5, 8, generator=g) if cross else None
    original = model(x, context)
    original_processor = model.inner.processor

    hooker = AttentionHeadHooker(strategy="fixed", init_value=1.0)
    manager = MaskManager([hooker]).register(model)
    assert isinstance(model.inner.processor, HeadMaskedAttnProcessor)
    assert torch.equal(model(x, context), original)  # SDPA path, mask of ones: bit-identical

    with torch.no_grad():
        hooker.masks()["inner"][2] = 0.0
    masked = model(x, context)
    keep = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert not torch.allclose(masked, original, atol=1e-4)
    assert torch.allclose(masked, _manual(model.inner, x, x if context is None else context, keep), atol=1e-5)

    manager.remove()
    assert model.inner.processor is original_processor
    assert torch.equal(model(x, context), original)


def test_head_masks_on_a_unet_with_sdpa_processors_and_gradients():
    net = tiny_network()
    assert all(isinstance(p, AttnProcessor2_0) for p in net.unet.attn_processors.values())
    x, t, cond = tiny_inputs()
    before = net(x, t, cond)
    hooker = AttentionHeadHooker(module_regex=r"attn2$", strategy="sigmoid", init_value=10.0)
    manager = MaskManager([hooker]).register(net)
    assert len(hooker.masks()) == 4 and all(lam.shape == (4,) for lam in hooker.masks().values())
    out = net(x, t, cond)
    assert torch.allclose(out, before, atol=1e-3)  # σ(10) = 1 - 4.5e-5
    out.sum().backward()
    assert all(lam.grad.abs().sum() > 0 for lam in hooker.masks().values())
    manager.remove()
    assert torch.equal(net(x, t, cond), before)


def test_unsupported_processor_is_a_clear_error():
    model = _attention()

    class Custom(AttnProcessor2_0):
        pass

    model.inner.set_processor(Custom())
    with pytest.raises(ValueError, match="attention layer 'inner' uses Custom"):
        MaskManager([AttentionHeadHooker()]).register(model)
    assert isinstance(model.inner.processor, Custom)
