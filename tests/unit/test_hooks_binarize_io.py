"""Binarization ratios, and masks saved -> loaded -> applied give identical outputs."""

import json

import pytest
import torch

from tests.unit.mask_helpers import randomize, tiny_inputs, tiny_network  # noqa: F401
from unlearn.hooks import MaskManager, apply_masks, binarize, load_masks, save_masks

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = [
    {"target": "unlearn.hooks.LinearHooker", "params": {"module_regex": r"transformer_blocks"}},
    {"target": "unlearn.hooks.AttentionHeadHooker"},
]


@pytest.fixture
def trained():
    net = tiny_network()
    manager = MaskManager.from_configs(CONFIGS, strategy="sigmoid").register(net)
    randomize(manager, seed=3)
    return net, manager


def test_off_share_cap_trains_exactly_the_masks_global_binarization_keeps():
    net = tiny_network()
    manager = MaskManager.from_configs(CONFIGS, strategy="binary").register(net)
    randomize(manager, seed=3)  # about half of the λ are below 0
    tau = manager.cap_off_share(0.05)
    assert tau < 0
    forward = torch.cat([m.detach() for m in manager.mask_values(sample=True).values()])
    shipped = torch.cat(list(binarize(manager, "global", off_ratio=0.05).values.values()))
    assert torch.equal(forward, shipped)  # the training forward is the saved binary mask
    # while fewer than the budget are below 0, τ stays 0 and only those units are off
    with torch.no_grad():
        for lam in manager.masks().values():
            lam.abs_().add_(0.1)
        first = next(iter(manager.masks().values()))
        first[:2] = -1.0
    assert manager.cap_off_share(0.05) == 0.0
    forward = torch.cat([m.detach() for m in manager.mask_values(sample=True).values()])
    assert int((forward == 0).sum()) == 2
    with pytest.raises(ValueError, match="strategy 'binary'"):
        MaskManager.from_configs(CONFIGS, strategy="sigmoid").register(tiny_network()).cap_off_share(0.05)


def test_local_binarization_switches_off_exactly_the_ratio_in_every_layer(trained):
    _, manager = trained
    result = binarize(manager, "local", off_ratio=0.25)
    lams = manager.masks()
    for key, v in result.values.items():
        k = round(0.25 * v.numel())
        assert int((v == 0).sum()) == k and set(v.unique().tolist()) <= {0.0, 1.0}
        # the switched-off units are those with the lowest λ
        assert lams[key].detach()[v == 0].max() <= lams[key].detach()[v == 1].min()
    total = sum(v.numel() for v in result.values.values())
    assert result.off_share == pytest.approx(sum(round(0.25 * v.numel()) for v in result.values.values()) / total)


def test_global_binarization_uses_one_cut_over_the_model(trained):
    _, manager = trained
    result = binarize(manager, "global", off_ratio=0.05)
    flat_values = torch.cat(list(result.values.values()))
    flat_lams = torch.cat([lam.detach() for lam in manager.masks().values()])
    assert int((flat_values == 0).sum()) == round(0.05 * flat_lams.numel())
    assert result.off_share == pytest.approx(round(0.05 * flat_lams.numel()) / flat_lams.numel())
    assert flat_lams[flat_values == 0].max() <= flat_lams[flat_values == 1].min()
    # layers differ: the global cut does not take the same share from each
    shares = {(v == 0).float().mean().item() for v in result.values.values()}
    assert len(shares) > 1
    thr = binarize(manager, "threshold", off_ratio=None)
    assert torch.equal(torch.cat(list(thr.values.values())), (flat_lams >= 0).float())
    with pytest.raises(ValueError, match="off_ratio"):
        binarize(manager, "local", off_ratio=1.5)


def test_save_load_apply_gives_identical_outputs_and_removes_cleanly(trained, tmp_path):
    net, manager = trained
    x, t, cond = tiny_inputs()
    with manager.disabled():
        base = net(x, t, cond)
    result = binarize(manager, "global", off_ratio=0.1)
    path = save_masks(
        manager,
        tmp_path / "masks.safetensors",
        values=result.values,
        metadata={"concept": "striped", "off_ratio": 0.1, "off_share": result.off_share},
    )
    manager.remove()
    values, meta = load_masks(path)
    assert meta["model_class"] == "DiffusersUNet" and meta["strategy"] == "sigmoid" and meta["concept"] == "striped"
    assert set(json.loads(meta["modules"])) == {"linear", "attn"}
    assert all(torch.equal(values[k], result.values[k]) for k in values)

    applied = apply_masks(net, path)
    masked = net(x, t, cond)
    assert not torch.equal(masked, base)
    fresh = tiny_network(seed=0)  # a new model with the same weights, in another process say
    apply_masks(fresh, path)
    assert torch.equal(fresh(x, t, cond), masked)
    # reference: the binary values put by hand into fixed masks on the same modules
    applied.remove()
    assert torch.equal(net(x, t, cond), base)
    ref = MaskManager.from_configs(CONFIGS, strategy="fixed", init_value=1.0).register(net)
    with torch.no_grad():
        for key, lam in ref.masks().items():
            lam.copy_(result.values[key])
    assert torch.equal(net(x, t, cond), masked)


def test_mask_files_for_other_models_or_missing_modules_are_clear_errors(trained, tmp_path):
    _, manager = trained
    path = save_masks(manager, tmp_path / "m.safetensors")
    other = tiny_network(block_out_channels=[8, 8], norm_num_groups=4)  # same names, other sizes
    with pytest.raises(
        ValueError,
        match=r"module 'unet\.down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn1"
        r"\.to_q' has 8 output features here but its mask has 16",
    ):
        apply_masks(other, path)
    smaller = tiny_network(down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"])
    with pytest.raises(
        ValueError,
        match=r"masks module 'unet\.down_blocks\.1\.attentions\.0.*which this DiffusersUNet "
        "does not have",
    ):
        apply_masks(smaller, path)
    assert not any(m._forward_hooks for m in smaller.modules())  # nothing registered on failure
    with pytest.raises(FileNotFoundError, match="no such file"):
        apply_masks(other, tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"cannot read {bad}"):
        load_masks(bad)
