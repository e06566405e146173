"""Reading weights from `.safetensors`, Lightning `.ckpt` and torch `.pt/.bin` files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from unlearn.paths import resolve_local_file

log = logging.getLogger(__name__)


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file. ``what`` names the file's role in errors:
    missing -> FileNotFoundError, unreadable -> ValueError, both naming the path."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{what}: cannot read {path} as .safetensors: {err}") from err
    return tensors, metadata


def load_state_dict(path: str | Path, key: str = "ckpt_path") -> dict[str, torch.Tensor]:
    """Load a flat state dict; a Lightning checkpoint's ``state_dict`` is unwrapped.

    Missing files raise FileNotFoundError and unreadable ones ValueError, both naming
    the path and the config key that held it.
    """
    p = resolve_local_file(path, key, "a .safetensors, .ckpt, .pt or .bin file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        obj = torch.load(str(p), map_location="cpu", weights_only=False)
    except Exception as err:  # safetensors, pickle and zip errors have no common base
        raise ValueError(f"{key}: cannot read checkpoint {p}: {err}") from err
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{key}: {p} holds a {type(obj).__name__}, expected a state dict")
    return dict(obj)


def shape_mismatches(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """"name: (file shape) in the file, (model shape) in the model" for each shared tensor whose shapes differ."""
    return [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
            for k, v in state.items() if k in own and own[k].shape != v.shape]


def load_into(module: torch.nn.Module, path: str | Path, key: str = "ckpt_path", strict: bool = False) -> None:
    """Load weights into ``module``, logging (or, when strict, raising on) key mismatches."""
    state = load_state_dict(path, key)
    own = module.state_dict()
    wrong = shape_mismatches(state, own)
    if wrong:
        raise ValueError(f"{key}: {path} was saved from a model of another shape ({len(wrong)} tensors), e.g. "
                         + "; ".join(wrong[:3]))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{key}: {path} does not match the model: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    if missing:
        log.warning("%s: %d keys missing from %s (e.g. %s)", key, len(missing), path, missing[:3])
    if unexpected:
        log.info("%s: %d unexpected keys in %s (e.g. %s)", key, len(unexpected), path, unexpected[:3])
    log.info("Loaded weights from %s", path)
