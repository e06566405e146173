"""Reversible mask hooks: learnable or fixed per-unit masks on a model's activations.

`MaskManager` builds hookers from config, registers them all and removes them all;
`binarize` turns trained masks into binary ones; `save_masks` / `apply_masks` store them
as safetensors and put them back on a model for inference.
"""

from unlearn.hooks.attention import AttentionHeadHooker, HeadMaskedAttnProcessor
from unlearn.hooks.base import MaskHooker
from unlearn.hooks.binarize import BINARIZE_MODES, Binarization, binarize, off_share
from unlearn.hooks.feedforward import FeedForwardHooker
from unlearn.hooks.io import MASK_FORMAT, apply_masks, load_masks, save_masks
from unlearn.hooks.linear import LinearHooker
from unlearn.hooks.manager import HOOKER_GROUPS, MaskManager, model_fingerprint
from unlearn.hooks.norm import NormHooker
from unlearn.hooks.strategies import STRATEGIES, MaskStrategy, build_strategy

__all__ = [
    "MaskHooker",
    "LinearHooker",
    "AttentionHeadHooker",
    "HeadMaskedAttnProcessor",
    "FeedForwardHooker",
    "NormHooker",
    "MaskManager",
    "HOOKER_GROUPS",
    "model_fingerprint",
    "MaskStrategy",
    "STRATEGIES",
    "build_strategy",
    "BINARIZE_MODES",
    "Binarization",
    "binarize",
    "off_share",
    "MASK_FORMAT",
    "save_masks",
    "load_masks",
    "apply_masks",
]
