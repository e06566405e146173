"""Erased weights as a small `.safetensors` file: only the changed parameters.

``erased.safetensors`` holds the fine-tuned tensors under their **diffusers UNet** names
(``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``, ...) and string
metadata (method, train_method, concept, guidance, iterations, base checkpoint). In plain
diffusers::

    from safetensors.torch import load_file
    pipe.unet.load_state_dict(load_file("erased.safetensors"), strict=False)

In unlearn, `apply_erased_weights` checks every name and shape first, and
``load_model(..., weights=...)`` / ``scripts/sample.py --weights`` use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.checkpoint import read_safetensors
from unlearn.selection import selection_root

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "save_erased_weights", "load_erased_weights", "apply_erased_weights"]

FORMAT = "unlearn-erased-weights/1"


def save_erased_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (diffusers UNet names) with ``metadata`` (values become strings), atomically;
    a NaN or inf tensor is a `unlearn.atomic.NonFiniteError` naming it, and nothing is written."""
    from unlearn.atomic import save_safetensors

    meta = {"format": FORMAT, **{str(k): "" if v is None else str(v) for k, v in metadata.items()}}
    return save_safetensors(tensors, path, meta, what="erased weights")


def load_erased_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of an erased-weights file; FileNotFoundError / ValueError name the path."""
    tensors, metadata = read_safetensors(path, "erased weights")
    if not tensors:
        raise ValueError(f"erased weights: {path} holds no tensors")
    return tensors, metadata


def apply_erased_weights(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Copy the tensors of ``path`` into ``model``'s UNet; returns the file's metadata.

    ``model`` is an engine (``.network``), a `DiffusersUNet` (``.unet``) or a diffusers
    UNet itself. Every name and shape is checked before anything is changed, so a
    mismatching file leaves the model untouched (ValueError naming the parameter).
    """
    tensors, metadata = load_erased_weights(path)
    root, _ = selection_root(getattr(model, "network", model))
    params = dict(root.named_parameters())
    for name, value in tensors.items():
        if name not in params:
            raise ValueError(
                f"erased weights {path}: parameter {name!r} is not in the model's "
                f"{type(root).__name__} (is this file for another architecture?)"
            )
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(
                f"erased weights {path}: parameter {name!r} has shape {tuple(value.shape)}, "
                f"the model's has {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))
    log.info(
        "applied %d erased tensors from %s (%s, concept %r)",
        len(tensors),
        path,
        metadata.get("train_method", "?"),
        metadata.get("concept", "?"),
    )
    return metadata
