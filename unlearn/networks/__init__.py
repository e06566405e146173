"""Networks: adapters over diffusers models, and first stages (identity, VAE)."""

from unlearn.networks.base import DiffusionNetwork
from unlearn.networks.first_stage import (
    DiffusersAutoencoderKL,
    FirstStage,
    IdentityFirstStage,
    PixelUnshuffleFirstStage,
)
from unlearn.networks.unet import DiffusersUNet, build_unet

__all__ = [
    "DiffusionNetwork",
    "DiffusersUNet",
    "build_unet",
    "FirstStage",
    "IdentityFirstStage",
    "PixelUnshuffleFirstStage",
    "DiffusersAutoencoderKL",
]
