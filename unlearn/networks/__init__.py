"""Networks: adapters over diffusers models (UNets, the SD3 and Flux transformers), and first stages (identity, VAE)."""

from unlearn.networks.base import DiffusionNetwork
from unlearn.networks.first_stage import (
    DiffusersAutoencoderKL,
    FirstStage,
    IdentityFirstStage,
    PixelUnshuffleFirstStage,
)
from unlearn.networks.flux import DiffusersFluxTransformer
from unlearn.networks.mmdit import DiffusersSD3Transformer, build_transformer
from unlearn.networks.unet import DiffusersUNet, build_unet

__all__ = [
    "DiffusionNetwork",
    "DiffusersUNet",
    "build_unet",
    "DiffusersSD3Transformer",
    "DiffusersFluxTransformer",
    "build_transformer",
    "FirstStage",
    "IdentityFirstStage",
    "PixelUnshuffleFirstStage",
    "DiffusersAutoencoderKL",
]
