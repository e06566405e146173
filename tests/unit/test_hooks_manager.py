"""Linear / feed-forward / norm hookers through MaskManager: selection, values, removal, dtype."""

import pytest
import torch
from diffusers.models.attention import FeedForward
from torch import nn

from tests.unit.mask_helpers import Wrapper, randomize, tiny_inputs, tiny_network  # noqa: F401
from unlearn.hooks import FeedForwardHooker, LinearHooker, MaskManager, NormHooker

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = [
    {"target": "unlearn.hooks.LinearHooker"},
    {"target": "unlearn.hooks.AttentionHeadHooker"},
    {"target": "unlearn.hooks.FeedForwardHooker"},
    {"target": "unlearn.hooks.NormHooker"},
]


def test_removed_hooks_leave_the_model_bit_identical():
    net = tiny_network()
    x, t, cond = tiny_inputs()
    before = net(x, t, cond)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    processors = dict(net.unet.attn_processors)
    manager = MaskManager.from_configs(ALL, strategy="sigmoid").register(net)
    randomize(manager)
    assert not torch.equal(net(x, t, cond), before)
    with manager.disabled():
        assert torch.equal(net(x, t, cond), before)
    manager.remove()
    assert torch.equal(net(x, t, cond), before)
    assert all(v is processors[k] for k, v in net.unet.attn_processors.items())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks for m in net.modules())


def test_module_filter_selects_by_regex_and_names_the_groups():
    net = tiny_network()
    manager = MaskManager.from_configs(
        [
            {"target": "unlearn.hooks.LinearHooker", "params": {"module_regex": r"attn2\.to_(k|v)$"}},
            {
                "target": "unlearn.hooks.NormHooker",
                "params": {"module_regex": r"transformer_blocks", "exclude_regex": "norm3"},
            },
        ]
    ).register(net)
    names = list(manager.masks())
    assert names and all(n.startswith(("linear:", "norm:")) for n in names)
    assert all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in names if n.startswith("linear:"))
    assert {n.rsplit(".", 1)[1] for n in names if n.startswith("norm:")} == {"norm1", "norm2"}
    lams = manager.masks().values()
    assert all(lam.dtype == torch.float32 and bool((lam.detach() == 3.0).all()) for lam in lams)
    manager.remove()
    with pytest.raises(ValueError, match="matches no module to mask"):
        MaskManager([LinearHooker(module_regex="nope")]).register(net)
    with pytest.raises(ValueError, match="selected by hookers 0 and 1"):
        MaskManager([LinearHooker(module_regex="to_q"), LinearHooker(module_regex="attn1")]).register(net)
    assert not any(m._forward_hooks for m in net.modules())  # a failed register leaves nothing behind


def test_linear_ff_and_norm_masks_equal_manual_computation():
    torch.manual_seed(0)
    lin = Wrapper(nn.Linear(6, 5))
    h = LinearHooker(strategy="sigmoid")
    MaskManager([h]).register(lin)
    randomize(h)
    x = torch.randn(3, 6)
    lam = h.masks()["inner"]
    assert torch.allclose(lin(x), nn.functional.linear(x, lin.inner.weight, lin.inner.bias) * torch.sigmoid(lam))

    ff = Wrapper(FeedForward(dim=8, mult=2, activation_fn="geglu"))
    hf = FeedForwardHooker(strategy="binary")
    MaskManager([hf]).register(ff)
    assert hf.masks()["inner"].shape == (16,)  # the hidden channels after gating
    randomize(hf)
    x = torch.randn(2, 4, 8)
    m = (hf.masks()["inner"] > 0).float()
    net = ff.inner.net
    assert torch.allclose(ff(x), net[2](net[1](net[0](x) * m)))

    gn = Wrapper(nn.GroupNorm(2, 6))
    hn = NormHooker(strategy="binary")
    MaskManager([hn]).register(gn)
    randomize(hn)
    x = torch.randn(2, 6, 3, 3)
    m = (hn.masks()["inner"] > 0).float()
    assert torch.allclose(gn(x), nn.functional.group_norm(x, 2, gn.inner.weight, gn.inner.bias) * m.view(1, 6, 1, 1))


def test_masks_stay_fp32_on_a_bf16_model():
    net = tiny_network()
    manager = MaskManager.from_configs(ALL).register(net)
    randomize(manager)
    before = {k: v.detach().clone() for k, v in manager.masks().items()}
    net.to(torch.bfloat16)
    manager.to(torch.bfloat16)
    assert all(lam.dtype == torch.float32 for lam in manager.masks().values())
    assert all(torch.equal(lam, before[k]) for k, lam in manager.masks().items())  # no precision lost
    x, t, cond = tiny_inputs(dtype=torch.bfloat16)
    out = net(x, t, cond)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(lam.grad is not None and lam.grad.dtype == torch.float32 for lam in manager.masks().values())


def test_noise_on_the_masked_out_part_is_seeded():
    torch.manual_seed(0)
    lin = Wrapper(nn.Linear(4, 4))
    h = LinearHooker(strategy="binary", init_value=-1.0, masked_noise_std=0.5)  # every unit off
    MaskManager([h]).register(lin)
    x = torch.randn(2, 4)
    torch.manual_seed(7)
    a = lin(x)
    torch.manual_seed(7)
    assert torch.equal(a, lin(x))
    torch.manual_seed(7)
    assert torch.allclose(a, 0.5 * torch.randn(2, 4))  # h·0 + std·ε·(1 - 0)
