"""Save masks as safetensors with metadata, and apply a saved file to a model for inference.

A file holds one fp32 tensor (units,) per masked module, keyed ``"<group>:<module>"``
(module names relative to the model the masks were trained on: an engine's ``network``),
and string metadata:

* ``format``: ``unlearn.masks/1``;
* ``model_class`` and ``model_fingerprint``: the architecture the masks belong to (a hash
  of the parameter names and shapes, see `model_fingerprint`);
* ``strategy``: the training strategy; ``modules``: JSON {group: [module names]};
* ``binarize_mode``, ``off_ratio``, ``off_share`` (share of units switched off) when the
  masks were binarized, plus free entries such as ``concept``.

`apply_masks` checks every module before touching the model: a file for another model,
or naming a module this model lacks, is a ValueError that names the module and the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.checkpoint import read_safetensors
from unlearn.config import get_obj_from_str
from unlearn.hooks.manager import HOOKER_GROUPS, MaskManager, model_fingerprint

__all__ = ["MASK_FORMAT", "save_masks", "load_masks", "apply_masks", "register_mask_values"]

MASK_FORMAT = "unlearn.masks/1"


def save_masks(
    manager: MaskManager,
    path: str | Path,
    values: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``values`` (default: the manager's deterministic masks) and metadata to ``path``,
    atomically; a NaN or inf mask value is a `unlearn.atomic.NonFiniteError` and nothing is written."""
    from unlearn.atomic import save_safetensors

    if manager.model_fingerprint is None:
        raise ValueError("save_masks: the manager was never registered on a model, so its model is unknown")
    if values is None:
        values = {k: v.detach() for k, v in manager.mask_values(sample=False).items()}
    expected = set(manager.masks())
    if set(values) != expected:
        missing = sorted(expected - set(values))[:3]
        extra = sorted(set(values) - expected)[:3]
        raise ValueError(f"save_masks: values do not match the manager's masks (missing {missing}, extra {extra})")
    modules = {group: entry["modules"] for group, entry in manager.describe().items()}
    meta = {
        "format": MASK_FORMAT,
        "model_class": str(manager.model_class),
        "model_fingerprint": str(manager.model_fingerprint),
        "strategy": ",".join(manager.strategies()),
        "modules": json.dumps(modules),
    }
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    tensors = {k: v.detach().to(device="cpu", dtype=torch.float32).contiguous() for k, v in values.items()}
    return save_safetensors(tensors, path, meta, what="masks")


def load_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(values, metadata) of a mask file; missing -> FileNotFoundError, unreadable -> ValueError."""
    values, meta = read_safetensors(path, "masks")
    if meta.get("format") != MASK_FORMAT:
        raise ValueError(
            f"masks: {path} is not an unlearn mask file (format {meta.get('format')!r}, expected {MASK_FORMAT!r})"
        )
    try:
        modules = json.loads(meta["modules"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"masks: {path} has no readable 'modules' metadata") from err
    listed = {f"{g}:{name}" for g, names in modules.items() for name in names}
    if listed != set(values):
        raise ValueError(f"masks: {path} is inconsistent: its tensors and its 'modules' metadata differ")
    for key, v in values.items():
        if v.ndim != 1 or not torch.isfinite(v).all() or v.min() < 0 or v.max() > 1:
            raise ValueError(f"masks: {path}: mask {key!r} must be a finite vector in [0, 1]")
    return values, meta


def apply_masks(model: nn.Module, path: str | Path, strict: bool = True) -> MaskManager:
    """Register the masks of ``path`` on ``model`` (fixed values, nothing trainable).

    ``model`` is the module the masks were trained on (an engine's ``network``). With
    ``strict`` the architecture fingerprint must match too. Returns the registered manager;
    ``manager.remove()`` restores the model exactly.
    """
    path = Path(path)
    values, meta = load_masks(path)
    modules: dict[str, list[str]] = json.loads(meta["modules"])
    made_for = f"{meta.get('model_class')} (fingerprint {meta.get('model_fingerprint')})"
    # every module is checked first, so a wrong module is named before the fingerprint
    hookers = _fixed_hookers(model, modules, values, f"masks: {path}", f"; the file was made for {made_for}")
    fingerprint = model_fingerprint(model)
    if strict and meta.get("model_fingerprint") != fingerprint:
        raise ValueError(
            f"masks: {path} was made for {made_for}, but this is a {type(model).__name__} with fingerprint "
            f"{fingerprint} (every masked module exists; pass strict=False to apply the masks anyway)"
        )
    return _register_fixed(model, hookers, values)


def register_mask_values(
    model: nn.Module,
    modules: Mapping[str, Sequence[str]],
    values: Mapping[str, torch.Tensor],
    what: str = "masks",
    made_for: str = "",
) -> MaskManager:
    """Register fixed masks ``values`` (``{"group:module": (units,)}``) on the ``modules``
    (``{group: [module names]}``) of ``model``; returns the registered manager."""
    return _register_fixed(model, _fixed_hookers(model, modules, values, what, made_for), values)


def _register_fixed(model: nn.Module, hookers: list, values: Mapping[str, torch.Tensor]) -> MaskManager:
    manager = MaskManager(hookers).register(model)
    with torch.no_grad():
        for hooker in hookers:
            for name, lam in hooker.masks().items():
                lam.copy_(values[f"{hooker.group}:{name}"].to(lam.device))
    return manager


def _fixed_hookers(
    model: nn.Module, modules: Mapping[str, Sequence[str]], values: Mapping[str, torch.Tensor], what: str, made_for: str
) -> list:
    from unlearn.hooks.base import MaskHooker

    hookers: list[MaskHooker] = []
    for group, names in modules.items():
        if group not in HOOKER_GROUPS:
            raise ValueError(f"{what}: unknown mask group {group!r}; known: {sorted(HOOKER_GROUPS)}")
        hooker = get_obj_from_str(HOOKER_GROUPS[group])(module_names=list(names), strategy="fixed", init_value=1.0)
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f"{what} masks module {name!r}, which this {type(model).__name__} does not have{made_for}"
                ) from None
            if not hooker.is_target(module):
                raise ValueError(
                    f"{what} masks {group} units of module {name!r}, which is a {type(module).__name__} here{made_for}"
                )
            n, got = hooker.num_units(module), values[f"{group}:{name}"].numel()
            if n != got:
                raise ValueError(
                    f"{what}: module {name!r} has {n} {hooker.unit_name}s here but its mask has {got}{made_for}"
                )
        hookers.append(hooker)
    return hookers
