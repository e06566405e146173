"""Conditioning: `GeneralConditioner` and its embedders (CLIP, OpenCLIP, T5, class, size).

Heavy dependencies (transformers, open_clip) are imported only when an embedder is built.
"""

from .embedders import (
    AbstractEmbModel,
    ClassEmbedder,
    CLIPTextEmbedder,
    OpenCLIPTextEmbedder,
    SizeConditionEmbedder,
    T5TextEmbedder,
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
    "T5TextEmbedder",
    "build_clip_tokenizer",
]
