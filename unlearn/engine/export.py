"""Erased weights as a small `.safetensors` file: only the changed parameters.

``erased.safetensors`` holds the fine-tuned tensors under their **diffusers UNet** names
(``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``, ...) and string
metadata (method, train_method, concept, guidance, iterations, base checkpoint). In plain
diffusers::

    from safetensors.torch import load_file
    pipe.unet.load_state_dict(load_file("erased.safetensors"), strict=False)

Text encoder tensors (``train_method: text_encoder``, AdvUnlearn's module) carry the pipeline
component they belong to before the transformers model's own names
(``text_encoder.encoder.layers.0.mlp.fc1.weight``; ``text_encoder_2.`` for a second encoder)::

    te = {k.removeprefix("text_encoder."): v for k, v in load_file("erased.safetensors").items()}
    pipe.text_encoder.load_state_dict(te, strict=False)

(transformers before 5.6 nests CLIP's names under ``text_model.``: add it there; unlearn accepts
both layouts.) In unlearn, `apply_erased_weights` checks every name and shape first, and
``load_model(..., weights=...)`` / the scripts' ``--weights`` use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.checkpoint import read_safetensors
from unlearn.selection import selection_root, text_encoder_components

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


def _text_encoders(model: nn.Module) -> dict[str, nn.Module]:
    """{export prefix: text model} of the model's conditioner: ``"text_encoder."`` -> the first
    text embedder's transformers model, and so on (`text_encoder_components`)."""
    conditioner = getattr(model, "conditioner", None)
    embedders = getattr(conditioner, "embedders", [])
    found = {}
    for index, component in text_encoder_components(conditioner).items():
        text_model = getattr(embedders[index], "transformer", None)  # CLIP, T5 (transformers)
        if text_model is None:
            text_model = getattr(embedders[index], "model", None)  # OpenCLIP
        if text_model is not None:
            found[component + "."] = text_model
    return found


def _text_model_name(name: str, params: Mapping[str, nn.Parameter]) -> str | None:
    """``name`` as the text model has it: transformers >= 5.6 dropped CLIP's ``text_model.`` level,
    so a file written under either layout applies to both."""
    for candidate in (name, "text_model." + name, name.removeprefix("text_model.")):
        if candidate in params:
            return candidate
    return None


def _targets(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: str | Path) -> list[tuple[str, nn.Parameter]]:
    """(file name, model parameter) of every tensor of the file; ValueError naming the first that
    fits nowhere or has another shape."""
    root, _ = selection_root(getattr(model, "network", model))
    unet_params = dict(root.named_parameters())
    encoders = _text_encoders(model)
    encoder_params = {prefix: dict(m.named_parameters()) for prefix, m in encoders.items()}
    pairs = []
    for name, value in tensors.items():
        prefix = next((p for p in encoders if name.startswith(p)), None)
        if prefix is not None:
            params, where = encoder_params[prefix], f"{prefix.rstrip('.')} ({type(encoders[prefix]).__name__})"
            target = _text_model_name(name[len(prefix) :], params)
        elif name.startswith("text_encoder"):
            raise ValueError(
                f"erased weights {path}: parameter {name!r} is for a text encoder the model does not have "
                f"(its text encoders: {[p.rstrip('.') for p in encoders] or 'none'})"
            )
        else:
            params, where = unet_params, type(root).__name__
            target = name if name in params else None
        if target is None:
            raise ValueError(
                f"erased weights {path}: parameter {name!r} is not in the model's {where} "
                "(is this file for another architecture?)"
            )
        if tuple(value.shape) != tuple(params[target].shape):
            raise ValueError(
                f"erased weights {path}: parameter {name!r} has shape {tuple(value.shape)}, "
                f"the model's has {tuple(params[target].shape)}"
            )
        pairs.append((name, params[target]))
    return pairs


def apply_erased_weights(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Copy the tensors of ``path`` into ``model``'s UNet (and text encoders); returns the file's metadata.

    ``model`` is an engine (``.network``, and ``.conditioner`` for text encoder tensors), a
    `DiffusersUNet` (``.unet``) or a diffusers UNet itself. Names prefixed ``text_encoder.`` (``_2.``,
    ...) go to the conditioner's text encoders, every other name to the UNet. Every name and shape
    is checked before anything is changed, so a mismatching file leaves the model untouched
    (ValueError naming the parameter).
    """
    tensors, metadata = load_erased_weights(path)
    targets = _targets(model, tensors, path)
    with torch.no_grad():
        for name, param in targets:
            param.copy_(tensors[name].to(device=param.device, dtype=param.dtype))
    log.info(
        "applied %d erased tensors from %s (%s, concept %r)",
        len(tensors),
        path,
        metadata.get("train_method", "?"),
        metadata.get("concept", "?"),
    )
    return metadata
