"""Warm-start a grown model from a smaller one's weights.

Growing a trained model (attention added at a level that had none, an extra layer) should
not throw away what it learned. Every tensor of the old model is loaded into the new one
unchanged; the blocks the old model lacks start with their output projection at zero. A
diffusers ``Transformer2DModel`` returns ``proj_out(h) + x``, so such a block starts as the
identity and the grown model computes exactly the old model's function until training
moves it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from unlearn.checkpoint import load_state_dict, shape_mismatches

log = logging.getLogger(__name__)

__all__ = ["warm_start"]


def _new_blocks(model: nn.Module, new_keys: set[str]) -> list[str]:
    """Names of the outermost modules none of whose tensors the old weights had (inside
    a new ModuleList, its items)."""
    names = []
    for name, module in model.named_modules():
        keys = [f"{name}.{k}" for k in module.state_dict()]
        if not name or not keys or not all(k in new_keys for k in keys):
            continue
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            continue
        if not any(name.startswith(f"{outer}.") for outer in names):
            names.append(name)
    return names


def warm_start(model: nn.Module, path: str | Path, key: str = "--from") -> list[str]:
    """Load ``path`` into ``model`` and zero the output projection of each new block.

    Returns the names of the new blocks. The old weights must be a subset of the model: a
    tensor of another shape or one the model has no place for is a ValueError naming it,
    and so is a new block that cannot start as the identity (no ``proj_out``).
    """
    state = load_state_dict(path, key)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise ValueError(f"{key}: {path} has {len(unexpected)} tensors the grown model lacks, "
                         f"e.g. {unexpected[:3]}: it is not a smaller version of this model")
    wrong = shape_mismatches(state, own)
    if wrong:
        raise ValueError(f"{key}: {path} differs in shape from the grown model: " + "; ".join(wrong[:3]))
    model.load_state_dict(state, strict=False)
    blocks = _new_blocks(model, set(own) - set(state))
    modules = dict(model.named_modules())
    for name in blocks:
        proj_out = getattr(modules[name], "proj_out", None)
        if not isinstance(proj_out, nn.Module):
            raise ValueError(f"{key}: new block {name} ({type(modules[name]).__name__}) has no proj_out, "
                             "so it cannot start as the identity; only attention blocks can be grown")
        with torch.no_grad():
            for p in proj_out.parameters():
                p.zero_()
    log.info("warm start from %s: %d tensors loaded, %d new blocks starting as the identity (%s)",
             path, len(state), len(blocks), ", ".join(blocks))
    return blocks
