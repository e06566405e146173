"""unlearn.scaled_fp8: scaled float8 weights read back as q * s, and what it refuses."""

from __future__ import annotations

import pytest
import torch

from unlearn.scaled_fp8 import dequantize, is_scaled

F8 = torch.float8_e4m3fn


def _q(*shape: int) -> torch.Tensor:
    return (torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) % 7 - 3).to(F8)


def test_a_tensor_scale_multiplies_every_entry_and_the_markers_go():
    q = _q(4, 6)
    state = {
        "blocks.0.attn.weight": q,
        "blocks.0.attn.scale_weight": torch.tensor(0.5),
        "blocks.0.attn.scale_input": torch.tensor(1.0),
        "blocks.0.attn.bias": torch.ones(4),
        "scaled_fp8": torch.empty(0, dtype=F8),
    }
    out = dequantize(state, "f.safetensors")
    assert set(out) == {"blocks.0.attn.weight", "blocks.0.attn.bias"}
    assert out["blocks.0.attn.weight"].dtype == torch.float32
    assert torch.equal(out["blocks.0.attn.weight"], q.float() * 0.5)
    assert out["blocks.0.attn.bias"] is state["blocks.0.attn.bias"]


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_a_row_scale_multiplies_each_row(shape):
    q, s = _q(4, 6), torch.tensor([1.0, 2.0, 0.25, -1.0]).reshape(shape)
    out = dequantize({"l.weight": q, "l.weight_scale": s, "l.input_scale": torch.tensor(2.0)}, "f")
    assert set(out) == {"l.weight"}
    assert torch.equal(out["l.weight"], q.float() * s.reshape(4, 1))


def test_a_block_scale_multiplies_each_block_of_columns():
    q, s = _q(2, 6), torch.tensor([[[1.0], [10.0], [100.0]], [[2.0], [20.0], [200.0]]])
    out = dequantize({"l.weight": q, "l.weight_scale": s}, "f")["l.weight"]
    want = q.float() * torch.tensor([[1.0, 1, 10, 10, 100, 100], [2, 2, 20, 20, 200, 200]])
    assert torch.equal(out, want)


def test_a_float8_weight_without_a_scale_is_left_as_stored():
    q = _q(3, 3)
    out = dequantize({"a.weight": q, "b.weight": _q(2, 2), "b.scale_weight": torch.tensor(3.0)}, "f")
    assert out["a.weight"] is q and torch.equal(out["b.weight"], _q(2, 2).float() * 3)


def test_is_scaled_reads_the_names_only():
    assert is_scaled(["x.weight", "x.scale_weight"]) and is_scaled(["model.diffusion_model.scaled_fp8"])
    assert is_scaled(["x.weight_scale"])
    assert not is_scaled(["x.weight", "x.bias", "scale_weight_decay.weight"]) and not is_scaled(None)


INT8, UINT8 = torch.ones(2, 2, dtype=torch.int8), torch.ones(2, 2, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"l.weight": INT8, "l.weight_scale": torch.tensor(1.0)}, r"l\.weight is torch\.int8"),
        ({"l.weight": UINT8, "l.weight_scale": torch.ones(2, 1)}, r"only float8 weights"),
        ({"l.scale_weight": torch.tensor(1.0)}, r"l\.scale_weight scales a weight the file does not hold"),
        ({"l.weight": _q(4, 6), "l.weight_scale": torch.ones(3)}, r"l\.weight_scale has shape \(3,\).*\(4, 6\)"),
        ({"l.weight": _q(4, 6), "l.weight_scale": torch.ones(4, 4, 1)}, r"l\.weight_scale has shape \(4, 4, 1\)"),
    ],
)
def test_what_cannot_be_read_fails_naming_the_file_and_tensor(state, message):
    with pytest.raises(ValueError, match=r"^model\.safetensors: .*" + message):
        dequantize(state, "model.safetensors")
