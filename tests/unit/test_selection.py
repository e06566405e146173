"""ESD train_method parameter sets on an SD1.5-architecture UNet (meta device, no weights)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from unlearn.selection import (
    TRAIN_METHOD_ALIASES,
    TRAIN_METHODS,
    canonical_train_method,
    ldm_input_block,
    ldm_output_block,
    select_parameters,
    selection_root,
)

# runwayml/stable-diffusion-v1-5 unet/config.json (published values)
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)

# (tensors, parameters) per method. 16 transformer blocks (down 2+2+2, mid 1, up 3+3+3);
# attn2 at width C: to_q C*C, to_k/to_v 768*C, to_out.0 C*C + C -> 5 tensors each.
EXPECTED = {
    "xattn": (80, 43_962_560),
    "selfattn": (80, 49_574_080),
    "esd-x-strict": (32, 19_169_280),  # 16 x (to_k, to_v) weights, 2 * 768 * C each
    "xlayer": (10, 3_605_760),  # two 640-wide attn2: 2 * (2*640^2 + 2*768*640 + 640)
    "selflayer": (10, 8_193_920),  # attn1 at 640 and 1280: (4*640^2 + 640) + (4*1280^2 + 1280)
    "full": (686, 859_520_964),
    # full minus attn2, time_embedding (4 tensors, 2_050_560), conv_norm_out (2, 640), conv_out (2, 11_524)
    "noxattn": (598, 813_495_680),
    "notime": (678, 857_458_240),
}


@pytest.fixture(scope="module")
def sd15():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    return unet, dict(unet.named_parameters())


@pytest.mark.parametrize("method", TRAIN_METHODS)
def test_counts_per_method(sd15, method):
    unet, params = sd15
    names = select_parameters(unet, method)
    assert (len(names), sum(params[n].numel() for n in names)) == EXPECTED[method]
    assert len(set(names)) == len(names)


def test_name_patterns(sd15):
    unet, params = sd15
    xattn = select_parameters(unet, "xattn")
    assert all(".attn2." in n for n in xattn) and xattn == [n for n in params if ".attn2." in n]
    assert {n.rsplit(".attn2.", 1)[1] for n in xattn} == {
        "to_q.weight",
        "to_k.weight",
        "to_v.weight",
        "to_out.0.weight",
        "to_out.0.bias",
    }
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in select_parameters(unet, "esd-x-strict"))
    assert all(".attn1." in n for n in select_parameters(unet, "selfattn"))
    noxattn = set(select_parameters(unet, "noxattn"))
    assert not any(".attn2." in n or n.startswith(("time_embedding.", "conv_norm_out.", "conv_out.")) for n in noxattn)
    assert "conv_in.weight" in noxattn and any("time_emb_proj" in n for n in noxattn)  # resnet emb layers stay
    notime = set(select_parameters(unet, "notime"))
    assert set(params) - notime == {
        f"{m}.{p}"
        for m in ("time_embedding.linear_1", "time_embedding.linear_2", "conv_norm_out", "conv_out")
        for p in ("weight", "bias")
    }


def test_layer_methods_map_ldm_blocks(sd15):
    unet, _ = sd15
    # LDM output_blocks.6/.8 -> up_blocks.2.attentions.0/.2; input_blocks.4/.7 -> down_blocks.1/.2 attentions.0
    assert ldm_output_block(6, 2) == "up_blocks.2.attentions.0."
    assert ldm_output_block(8, 2) == "up_blocks.2.attentions.2."
    assert ldm_input_block(4, 2) == "down_blocks.1.attentions.0."
    assert ldm_input_block(7, 2) == "down_blocks.2.attentions.0."
    xlayer = select_parameters(unet, "xlayer")
    blocks = {n.split(".transformer_blocks")[0] for n in xlayer}
    assert blocks == {"up_blocks.2.attentions.0", "up_blocks.2.attentions.2"}
    assert all(".attn2." in n for n in xlayer)
    selflayer = select_parameters(unet, "selflayer")
    assert {n.split(".transformer_blocks")[0] for n in selflayer} == {
        "down_blocks.1.attentions.0",
        "down_blocks.2.attentions.0",
    }
    assert all(".attn1." in n for n in selflayer)
    with pytest.raises(ValueError, match="downsampler"):
        ldm_input_block(3, 2)


def test_aliases_equal_targets(sd15):
    unet, _ = sd15
    for alias, target in TRAIN_METHOD_ALIASES.items():
        assert canonical_train_method(alias) == target
        assert select_parameters(unet, alias) == select_parameters(unet, target)


def test_unknown_method_lists_valid_ones(sd15):
    with pytest.raises(ValueError, match="train_method: unknown 'xatn'.*xattn, noxattn.*esd-x-strict.*esd-u"):
        select_parameters(sd15[0], "xatn")


def test_layer_method_on_small_unet_is_a_clear_error():
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    with pytest.raises(ValueError, match="'xlayer' selects no parameters"):
        select_parameters(unet, "xlayer")
    assert len(select_parameters(unet, "xattn")) == 5 * 4  # down 1, mid 1, up 2 transformer blocks


def test_selection_root_unwraps_diffusers_unet(sd15):
    class Wrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

    root, prefix = selection_root(Wrapper(sd15[0]))
    assert root is sd15[0] and prefix == "unet."
    assert selection_root(sd15[0]) == (sd15[0], "")
