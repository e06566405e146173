"""Conditioning: `GeneralConditioner` and its embedders (CLIP, OpenCLIP, class, size).

Heavy dependencies (transformers, open_clip) are imported only when an embedder is built.
"""

from .embedders import (
    AbstractEmbModel,
    ClassEmbedder,
    CLIPTextEmbedder,
    OpenCLIPTextEmbedder,
    SizeConditionEmbedder,
)
from .general import GeneralConditioner
from .tokenizer import build_clip_tokenizer

__all__ = [
    "AbstractEmbModel",
    "ClassEmbedder",
    "CLIPTextEmbedder",
    "GeneralConditioner",
    "OpenCLIPTextEmbedder",
    "SizeConditionEmbedder",
    "build_clip_tokenizer",
]
