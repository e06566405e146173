"""ESD train_method parameter sets on an SD1.5-architecture UNet (meta device, no weights)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from unlearn.selection import (
    JOINT_METHODS,
    JOINT_ONLY_METHODS,
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


@pytest.mark.parametrize("method", [m for m in TRAIN_METHODS if m not in JOINT_ONLY_METHODS])
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


# ------------------------------------------------------------------ joint-attention transformers
# (tensors, parameters) per method on the released SD3-medium and Flux.1-dev transformer shapes.
# SD3 xattn: 24 blocks x add_q/k/v (1536^2 + 1536 each) + 23 x to_add_out (the last block is
# context_pre_only) = 24 * 7_082_496 + 23 * 2_360_832; esd-x-strict: 24 x add_k/add_v.
# Flux xattn: 19 double-stream blocks x add_q/k/v and to_add_out (3072^2 + 3072 each); the 38
# single-stream blocks project text and image tokens with the same tensors, so hold none.
# xattn-pooled adds the pooled projection's linear_1 and linear_2: SD3 2048 -> 1536 -> 1536
# (5_508_096), Flux 768 -> 3072 -> 3072 (11_802_624).
JOINT_EXPECTED = {
    "sd3": {
        "xattn": (190, 224_279_040),
        "esd-x-strict": (96, 113_319_936),
        "xattn-pooled": (194, 229_787_136),
        "noxattn": (480, 1_790_965_248),
        "notime": (670, 2_015_244_288),
        "full": (682, 2_028_328_000),
    },
    "flux": {
        "xattn": (152, 717_459_456),
        "esd-x-strict": (76, 358_729_728),
        "xattn-pooled": (156, 729_262_080),
        "noxattn": (992, 11_132_609_536),
        "notime": (1144, 11_850_068_992),
        "full": (1160, 11_901_408_320),
    },
}


@pytest.fixture(scope="module", params=["sd3", "flux"])
def joint(request):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from unlearn.networks.architectures import ARCHITECTURES

    cls = SD3Transformer2DModel if request.param == "sd3" else FluxTransformer2DModel
    with torch.device("meta"):
        model = cls(**ARCHITECTURES[request.param]["transformer"])
    return request.param, model, dict(model.named_parameters())


@pytest.mark.parametrize("method", JOINT_METHODS)
def test_joint_attention_counts_per_method(joint, method):
    arch, model, params = joint
    names = select_parameters(model, method)
    assert (len(names), sum(params[n].numel() for n in names)) == JOINT_EXPECTED[arch][method]


def test_joint_attention_sets_are_the_text_streams_projections(joint):
    _, model, params = joint
    xattn = select_parameters(model, "esd-x")
    assert {n.split(".attn.")[1].split(".")[0] for n in xattn} == {
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
    }
    assert all(n.startswith("transformer_blocks.") for n in xattn)  # never a single-stream block
    strict = select_parameters(model, "esd-x-strict")
    assert set(strict) < set(xattn) and all(".attn.add_k_proj." in n or ".attn.add_v_proj." in n for n in strict)
    fixed = ("time_text_embed.", "norm_out.", "proj_out.")
    noxattn = set(select_parameters(model, "esd-u"))
    assert noxattn.isdisjoint(xattn) and not any(n.startswith(fixed) for n in noxattn)
    assert set(params) == noxattn | set(xattn) | {n for n in params if n.startswith(fixed)}
    assert "context_embedder.weight" in noxattn and any(".attn.to_q." in n for n in noxattn)


def test_xattn_pooled_is_xattn_and_the_pooled_text_projection(joint):
    _, model, _ = joint
    extra = set(select_parameters(model, "xattn-pooled")) - set(select_parameters(model, "xattn"))
    assert extra == {f"time_text_embed.text_embedder.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}


def test_xattn_pooled_on_a_unet_names_the_method_that_applies(sd15):
    with pytest.raises(ValueError, match="'xattn-pooled' is defined on joint-attention transformers.*choose xattn"):
        select_parameters(sd15[0], "xattn-pooled")


@pytest.mark.parametrize("method", ["selfattn", "xlayer", "selflayer"])
def test_unet_only_methods_on_a_joint_transformer_name_the_ones_that_apply(joint, method):
    with pytest.raises(ValueError, match=rf"train_method '{method}' is defined on UNets.*xattn, noxattn, full"):
        select_parameters(joint[1], method)


def test_selection_root_unwraps_a_transformer_adapter(joint):
    class Adapter(torch.nn.Module):
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

    assert selection_root(Adapter(joint[1])) == (joint[1], "transformer.")
