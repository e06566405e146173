"""The real SD 1.5 / 2.1 / XL / SD3-medium / Flux.1-dev architectures: parameter counts equal the released ones."""

from __future__ import annotations

import pytest
import torch

from unlearn.networks.architectures import ARCHITECTURES, build_components

PUBLISHED = {  # parameters of the released diffusers repos' components
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
    "sd3": {  # stable-diffusion-3-medium-diffusers: the "2B" MMDiT, CLIP-L/G with projections, T5-XXL encoder
        "transformer": 2_028_328_000,
        "vae": 83_819_683,
        "text_encoder": 123_650_304,
        "text_encoder_2": 694_659_840,
        "text_encoder_3": 4_762_310_656,
    },
    "flux": {  # FLUX.1-dev: the 12B guidance-distilled MMDiT, CLIP-L (pooled), T5-XXL encoder
        "transformer": 11_901_408_320,
        "vae": 83_819_683,
        "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656,
    },
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_parameter_counts_match_the_released_models(arch):
    with torch.device("meta"):  # shapes only, no memory
        parts = build_components(arch)
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    assert counts == PUBLISHED[arch]


def test_unknown_architecture():
    with pytest.raises(ValueError, match="arch: expected one of"):
        build_components("sd9")


def test_sd3_is_the_2b_mmdit_with_16_latent_channels():
    with torch.device("meta"):
        parts = build_components("sd3")
    assert round(sum(p.numel() for p in parts["transformer"].parameters()) / 1e9, 2) == 2.03  # "SD3-medium, 2B"
    assert parts["transformer"].config.joint_attention_dim == parts["text_encoder_3"].config.d_model == 4096
    clip_width = parts["text_encoder"].config.hidden_size + parts["text_encoder_2"].config.hidden_size
    pooled = parts["text_encoder"].config.projection_dim + parts["text_encoder_2"].config.projection_dim
    assert clip_width == pooled == parts["transformer"].config.pooled_projection_dim == 2048
    assert parts["vae"].config.latent_channels == parts["transformer"].config.in_channels == 16


def test_flux_is_the_11_9b_guidance_distilled_mmdit():
    with torch.device("meta"):
        parts = build_components("flux")
    assert round(sum(p.numel() for p in parts["transformer"].parameters()) / 1e9, 1) == 11.9  # "Flux.1, 12B"
    config = parts["transformer"].config
    assert config.guidance_embeds and sum(config.axes_dims_rope) == config.attention_head_dim == 128
    assert config.joint_attention_dim == parts["text_encoder_2"].config.d_model == 4096
    assert config.pooled_projection_dim == parts["text_encoder"].config.hidden_size == 768
    assert config.in_channels == 4 * parts["vae"].config.latent_channels == 64  # packed 2 x 2 patches
