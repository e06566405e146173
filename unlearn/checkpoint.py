"""Reading weights from `.safetensors`, Lightning `.ckpt` and torch `.pt/.bin` files.

No code runs from a file: torch files load with ``weights_only=True`` (tensors, plain Python
types and the few classes torch allows), and a file that needs pickle for anything more is
refused with a message that says how to convert it (`load_torch_file`).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


class UnsafeCheckpointError(ValueError):
    """A torch file that needs pickle for more than tensors and plain types: it could run code."""


def load_torch_file(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; every failure is a one-line ValueError naming ``what``
    and ``path``: `UnsafeCheckpointError` (with how to convert the file) for a file that needs
    pickle to build other objects, a plain ValueError for a truncated or corrupt one."""
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise ValueError(f"{what}: cannot read {path}: corrupt pickle data ({_first_line(err)})") from err
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        needs = f"it needs pickle to build {found.group(1)}" if found else "it holds more than tensors"
        raise UnsafeCheckpointError(
            f"{what}: refusing to load {path}: {needs}, and unpickling it could run code. If you trust the "
            "file, convert it once in a trusted session: sd = torch.load(path, weights_only=False)['state_dict']; "
            "safetensors.torch.save_file(sd, 'weights.safetensors'), and pass the .safetensors file"
        ) from None
    except EOFError as err:
        raise ValueError(f"{what}: cannot read {path}: the file is empty or truncated") from err
    except FileNotFoundError:
        raise
    except Exception as err:  # zip, storage and OS errors have no common base
        raise ValueError(f"{what}: cannot read {path} (truncated or corrupt?): {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's message (torch's go on for a paragraph)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


def load_state_dict(path: str | Path, key: str = "ckpt_path") -> dict[str, torch.Tensor]:
    """Load a flat state dict; a Lightning checkpoint's ``state_dict`` is unwrapped.

    Missing files raise FileNotFoundError and unreadable or unsafe ones ValueError, both naming
    the path and the config key that held it. Torch files load with ``weights_only=True``.
    """
    p = resolve_local_file(path, key, "a .safetensors, .ckpt, .pt or .bin file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{key}: cannot read checkpoint {p}: {err}") from err
    obj = load_torch_file(p, key)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{key}: {p} holds a {type(obj).__name__}, expected a state dict")
    return dict(obj)


def shape_mismatches(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """ "name: (file shape) in the file, (model shape) in the model" for each shared tensor whose shapes differ."""
    return [
        f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]


def load_into(module: torch.nn.Module, path: str | Path, key: str = "ckpt_path", strict: bool = False) -> None:
    """Load weights into ``module``, logging (or, when strict, raising on) key mismatches."""
    state = load_state_dict(path, key)
    own = module.state_dict()
    wrong = shape_mismatches(state, own)
    if wrong:
        raise ValueError(
            f"{key}: {path} was saved from a model of another shape ({len(wrong)} tensors), e.g. "
            + "; ".join(wrong[:3])
        )
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
