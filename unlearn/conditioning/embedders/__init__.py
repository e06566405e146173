"""Embedders for `GeneralConditioner`, one per file; all subclass `AbstractEmbModel`."""

from .base import AbstractEmbModel
from .class_embedder import ClassEmbedder
from .clip import CLIPTextEmbedder
from .openclip import OpenCLIPTextEmbedder
from .size import SizeConditionEmbedder
from .t5 import T5TextEmbedder

__all__ = [
    "AbstractEmbModel",
    "ClassEmbedder",
    "CLIPTextEmbedder",
    "OpenCLIPTextEmbedder",
    "SizeConditionEmbedder",
    "T5TextEmbedder",
]
