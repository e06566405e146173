"""Write a state dict as a ComfyUI-style scaled float8 file (not a test module).

Every 2-D ``*.weight`` becomes float8_e4m3fn values ``q`` with a float32 scale ``s`` chosen so the
largest entry maps to float8's largest finite value, as ComfyUI's ``*_fp8_scaled`` files store them.
The readers' expected result is computed here, independently of ``unlearn.scaled_fp8``: the same
tensors with each weight replaced by ``q.float() * s``.
"""

from __future__ import annotations

import torch

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def scaled_fp8(
    state: dict[str, torch.Tensor], spelling: str = "scale_weight", per_row: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the scaled file's tensors, the dequantized tensors a reader must load) of ``state``.

    ``spelling``: "scale_weight" (with the ``scaled_fp8`` marker and ``scale_input``) or
    "weight_scale" (with ``input_scale``); ``per_row``: one scale per output row instead of one."""
    scaled, expected = {}, {}
    for key, value in state.items():
        if not (key.endswith(".weight") and value.ndim == 2):
            scaled[key] = expected[key] = value
            continue
        peak = value.abs().amax(dim=1, keepdim=True) if per_row else value.abs().amax()
        scale = (peak.clamp(min=1e-12) / FP8_MAX).float()
        q = (value / scale).to(torch.float8_e4m3fn)
        stem = key[: -len("weight")]
        scaled[key] = q
        scaled[stem + spelling] = scale
        scaled[stem + ("scale_input" if spelling == "scale_weight" else "input_scale")] = torch.ones(())
        expected[key] = q.float() * scale
    if spelling == "scale_weight":
        scaled["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return scaled, expected
