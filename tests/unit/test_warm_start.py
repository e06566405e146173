"""Growing a model: old weights kept, new attention blocks start as the identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unlearn.config import instantiate_from_config, load_configs
from unlearn.engine.warm_start import warm_start
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "toy" / "smoke.yaml"
FINE_ATTN = [
    "model.params.network_config.params.config.down_block_types=[CrossAttnDownBlock2D,CrossAttnDownBlock2D]",
    "model.params.network_config.params.config.up_block_types=[CrossAttnUpBlock2D,CrossAttnUpBlock2D]",
]


def _build(overrides=()):
    return instantiate_from_config(load_configs([SMOKE], list(overrides)).model)


@pytest.fixture
def small_weights(tmp_path):
    torch.manual_seed(0)
    model = _build()
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_grown_model_computes_the_small_models_function(small_weights):
    small, path = small_weights
    torch.manual_seed(1)  # the grown model's own init differs everywhere
    grown = _build(FINE_ATTN)
    blocks = warm_start(grown, path)
    assert blocks == ["network.unet.down_blocks.0.attentions.0", "network.unet.up_blocks.1.attentions.0",
                      "network.unet.up_blocks.1.attentions.1"]
    a = small.generate(["a striped circle", "a solid star"], seeds=[0, 1], num_steps=3)
    b = grown.generate(["a striped circle", "a solid star"], seeds=[0, 1], num_steps=3)
    assert torch.equal(a, b)
    # The new blocks are trainable: the loss has a gradient on their output projection.
    batch = {"jpg": torch.rand(2, 3, 16, 16) * 2 - 1, "txt": ["a striped circle", "a dotted star"]}
    loss = grown.loss_fn(grown.network, grown.denoiser, grown.encode_first_stage(batch["jpg"]), grown.condition(batch))
    loss.mean().backward()
    grad = grown.network.unet.down_blocks[0].attentions[0].proj_out.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_weights_of_a_larger_model_are_refused(tmp_path):
    torch.manual_seed(0)
    big = _build(FINE_ATTN)
    path = tmp_path / "big.safetensors"
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"tensors the grown model lacks, e\.g\. \['network\.unet\.down_blocks\.0\.attentions"):
        warm_start(_build(), path)


def test_a_layer_of_another_width_is_refused(small_weights):
    _, path = small_weights
    deeper = _build(["model.params.network_config.params.config.layers_per_block=2"])
    with pytest.raises(ValueError, match=r"differs in shape .*up_blocks\.0\.resnets\.1\.conv1\.weight: \(32, 48, 3, 3\) in the file"):
        warm_start(deeper, path)


def test_a_new_block_without_proj_out_is_refused(tmp_path):
    small = torch.nn.Sequential(torch.nn.Linear(4, 4))
    path = tmp_path / "mlp.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    grown = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"new block 1 \(Linear\) has no proj_out"):
        warm_start(grown, path)


def test_grow_model_script_writes_loadable_weights(tmp_path, small_weights):
    small, path = small_weights
    cfg = tmp_path / "grown.yaml"
    cfg.write_text("model:\n  params:\n    network_config:\n      params:\n        config:\n"
                   "          down_block_types: [CrossAttnDownBlock2D, CrossAttnDownBlock2D]\n"
                   "          up_block_types: [CrossAttnUpBlock2D, CrossAttnUpBlock2D]\n")
    out = tmp_path / "init.safetensors"
    load_script("grow_model.py").main(["--config", str(SMOKE), str(cfg), "--from", str(path), "--out", str(out)])
    tensors = load_file(str(out))
    assert torch.equal(tensors["network.unet.down_blocks.0.attentions.0.proj_out.weight"],
                       torch.zeros_like(tensors["network.unet.down_blocks.0.attentions.0.proj_out.weight"]))
    assert torch.equal(tensors["network.unet.conv_in.weight"], small.state_dict()["network.unet.conv_in.weight"])
