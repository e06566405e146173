"""The real SD 1.5 / SD 2.1 / SDXL architectures: parameter counts equal the published models'."""

from __future__ import annotations

import pytest
import torch

from unlearn.networks.architectures import ARCHITECTURES, build_components

PUBLISHED = {  # parameters of the released diffusers repos' components
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_parameter_counts_match_the_released_models(arch):
    with torch.device("meta"):  # shapes only, no memory
        parts = build_components(arch)
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    assert counts == PUBLISHED[arch]


def test_unknown_architecture():
    with pytest.raises(ValueError, match="arch: expected one of"):
        build_components("sd3")
