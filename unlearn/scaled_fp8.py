"""Float8 single files with weight scales (ComfyUI's ``*_fp8_scaled`` checkpoints) read as real weights.

Such a file stores a Linear's weight as float8 values ``q`` with a scale ``s`` beside it; the weight
is ``q * s``. Two spellings exist: ``<layer>.scale_weight`` (with a ``scaled_fp8`` marker tensor and
sometimes ``<layer>.scale_input``) and ``<layer>.weight_scale`` (with ``input_scale`` and a
``comfy_quant`` format record). diffusers' and our key converters read ``weight`` alone, so a scaled
file would load as ``q``, off by ``1 / s`` in every layer, without an error: every reader of a single
file dequantizes first. Input scales only serve float8 matmuls and are dropped.

A scale is one number per tensor, one per output row, or one per block of input columns
(``(rows, blocks, 1)``). Weights stored in other formats with scales (int8, packed 4-bit) are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["WEIGHT_SCALES", "is_scaled", "dequantize"]

WEIGHT_SCALES = ("scale_weight", "weight_scale")
_DROPPED = ("scale_input", "input_scale", "scaled_fp8", "comfy_quant")
_FLOAT8 = {torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz}


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def is_scaled(keys: Iterable[str] | None) -> bool:
    """Whether a file with these tensor names stores scaled weights (False when names are unknown)."""
    return keys is not None and any(_leaf(k) in WEIGHT_SCALES or _leaf(k) == "scaled_fp8" for k in keys)


def _times_scale(q: torch.Tensor, scale: torch.Tensor, key: str, what: str) -> torch.Tensor:
    w, s = q.float(), scale.float()
    rows = w.shape[0]
    if s.numel() == 1:
        return w * s.reshape(())
    if s.numel() == rows and (s.ndim == 1 or s.shape[1:].numel() == 1) and s.ndim <= w.ndim:
        return w * s.reshape(rows, *([1] * (w.ndim - 1)))
    if s.ndim == 3 and w.ndim == 2 and s.shape[0] == rows and s.shape[2] == 1 and w.shape[1] % s.shape[1] == 0:
        return (w.reshape(rows, s.shape[1], -1) * s).reshape(w.shape)
    raise ValueError(
        f"{what}: the scale of {key} has shape {tuple(s.shape)}, which does not fit its weight {tuple(w.shape)} "
        "(expected one value, one per row, or (rows, blocks, 1))"
    )


def dequantize(state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``state`` with every scaled weight replaced by ``q * s`` in float32 and the scale and marker
    tensors removed; ``what`` (the file) names the tensor in a ValueError."""
    out = {k: v for k, v in state.items() if _leaf(k) not in WEIGHT_SCALES + _DROPPED}
    for key, scale in state.items():
        leaf = _leaf(key)
        if leaf not in WEIGHT_SCALES:
            continue
        weight_key = key[: -len(leaf)] + "weight"
        if weight_key not in state:
            raise ValueError(f"{what}: {key} scales a weight the file does not hold ({weight_key})")
        q = state[weight_key]
        if q.dtype not in _FLOAT8:
            raise ValueError(
                f"{what}: {weight_key} is {q.dtype} with a scale; only float8 weights with scales can be read "
                "(convert other quantized files to float8 or 16-bit first)"
            )
        out[weight_key] = _times_scale(q, scale, key, what)
    return out
