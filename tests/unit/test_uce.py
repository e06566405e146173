"""UCE: the closed-form edit (`unlearn.editors.uce`) and the engine that runs it on the smoke model."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.unit.esd_helpers import smoke_params
from unlearn.config import ConfigError
from unlearn.data.canvas import CANVAS
from unlearn.editors import EditPrompts, TextRows, UCEEditor, aligned_rows, uce_weight
from unlearn.editors.uce import preserved_rows
from unlearn.engine.closed_form import ClosedFormEngine, last_token_index

TOY_META = {"objects": list(CANVAS.objects), "styles": list(CANVAS.styles)}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_uce(erase_scale=1.0, preserve_scale=0.1, lamb=0.5, token_rows="from_last", **kw: Any) -> ClosedFormEngine:
    """UCE of "striped" on the smoke model (seeded random weights), plus ``kw``."""
    torch.manual_seed(0)
    params = {**smoke_params(), "base_learning_rate": None, "concept": "striped", **kw}
    params["editor_config"] = {
        "target": "unlearn.editors.uce.UCEEditor",
        "params": {
            "erase_scale": erase_scale,
            "preserve_scale": preserve_scale,
            "lamb": lamb,
            "token_rows": token_rows,
        },
    }
    return ClosedFormEngine(**params)


def _params(engine: ClosedFormEngine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.named_parameters()}


# ------------------------------------------------------------------ the formula
def test_with_no_regulariser_and_no_preservation_a_solvable_system_maps_exactly():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64)  # (out, D)
    c_erase = torch.randn(4, 4, generator=g, dtype=torch.float64)  # D independent rows: one exact solution
    c_target = torch.randn(4, 4, generator=g, dtype=torch.float64)
    v_target = c_target @ W.T  # (N, out)
    new = uce_weight(W, c_erase, v_target, None, erase_scale=1.0, preserve_scale=0.0, lamb=0.0)
    torch.testing.assert_close(c_erase @ new.T, v_target, rtol=0, atol=1e-10)
    # preserved rows with weight 0 change nothing; fewer rows than D without lamb is refused
    same = uce_weight(
        W, c_erase, v_target, torch.randn(3, 4, generator=g, dtype=torch.float64), preserve_scale=0.0, lamb=0.0
    )
    torch.testing.assert_close(same, new, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"^lamb: the erased and preserved rows span 2 of the 4 embedding dimensions"):
        uce_weight(W, c_erase[:2], v_target[:2], None, lamb=0.0)


def test_the_formula_is_the_official_one():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 3, generator=g, dtype=torch.float64)
    c_e, c_t, c_p = (torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (2, 2, 4))
    s_e, s_p, lamb = 1.0, 0.1, 0.5
    mat1 = (
        lamb * W
        + s_e * sum((W @ t)[:, None] @ e[None] for e, t in zip(c_e, c_t))
        + s_p * sum((W @ p)[:, None] @ p[None] for p in c_p)
    )
    mat2 = lamb * torch.eye(3, dtype=torch.float64) + s_e * c_e.T @ c_e + s_p * c_p.T @ c_p
    expected = mat1 @ torch.inverse(mat2)  # train_erase.py: mat1 @ torch.inverse(mat2)
    torch.testing.assert_close(uce_weight(W, c_e, c_t @ W.T, c_p, s_e, s_p, lamb), expected, rtol=0, atol=1e-10)


def test_rows_from_the_last_word_token_are_paired_as_the_reference_cuts_them():
    rows = torch.arange(2 * 6 * 1, dtype=torch.float32).reshape(2, 6, 1)  # (B, L, D): row values are their index
    erase = TextRows(rows=rows[:1], last=torch.tensor([3]))
    target = TextRows(rows=rows[1:], last=torch.tensor([1]))
    c_e, c_t = aligned_rows(erase, target, "from_last")
    # old_emb[3 : 6 - max(0, 3 - 3)], new_emb[1 : 6 - max(0, 3 - 1)]
    assert c_e.flatten().tolist() == [3, 4, 5] and c_t.flatten().tolist() == [7, 8, 9]
    c_e, c_t = aligned_rows(erase, target, "last")
    assert c_e.flatten().tolist() == [3] and c_t.flatten().tolist() == [7]
    both = TextRows(rows=rows, last=torch.tensor([3, 1]))
    assert preserved_rows(both, "from_last").shape == (12, 1)
    assert preserved_rows(both, "last").flatten().tolist() == [3, 7]


def test_the_editor_maps_erased_rows_onto_their_targets_with_no_regulariser():
    g = torch.Generator().manual_seed(2)
    weights = {
        "a.attn2.to_k.weight": torch.randn(5, 4, generator=g),
        "a.attn2.to_v.weight": torch.randn(3, 4, generator=g),
    }
    table = {p: torch.randn(1, 2, 4, generator=g) for p in ("e1", "e2", "t")}

    def encode(prompts):  # the last word token is row 1 of each prompt: two rows per erased prompt
        return TextRows(rows=torch.cat([table[p] for p in prompts]), last=torch.ones(len(prompts), dtype=torch.long))

    editor = UCEEditor(erase_scale=1.0, preserve_scale=0.0, lamb=0.0, token_rows="from_last")
    with pytest.raises(ValueError, match="^lamb: "):  # two prompts x one row: 2 of 4 dimensions
        editor(weights, encode, EditPrompts(erase=["e1", "e2"], target=["t", "t"]))
    table.update({p: torch.randn(1, 2, 4, generator=g) for p in ("e3", "e4")})
    out = editor(weights, encode, EditPrompts(erase=["e1", "e2", "e3", "e4"], target=["t"] * 4))
    for name, W in weights.items():
        c_e = torch.cat([table[p][0, 1:] for p in ("e1", "e2", "e3", "e4")])  # (4, D)
        torch.testing.assert_close(
            c_e @ out.weights[name].T, (table["t"][0, 1:] @ W.T).expand(4, -1), rtol=0, atol=2e-4
        )
    assert out.logs["erase_residual"] < 1e-4


@pytest.mark.parametrize("kw, match", [
    ({"token_rows": "all"}, r"^token_rows: expected one of \['from_last', 'last'\]"),
    ({"erase_scale": 0}, r"^erase_scale: expected a number > 0"),
    ({"lamb": -1}, r"^lamb: "),
])  # fmt: skip
def test_bad_settings_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        UCEEditor(**kw)


# ------------------------------------------------------------------ the engine
def test_the_last_word_token_is_the_references():
    engine = make_uce()
    tokenizer = engine.conditioner.embedders[0].tokenizer
    prompts = ["", "a striped circle", "something in striped style"]
    expected = [len(tokenizer(p).input_ids) - 2 for p in prompts]  # attention_mask.sum() - 2
    assert last_token_index(engine.conditioner, prompts).tolist() == expected and expected[0] == 0


def test_the_edit_touches_only_cross_attention_keys_and_values_and_is_the_formula():
    engine = make_uce(metadata=TOY_META)
    assert engine.prompts == ["something in striped style", "an image in striped style", "a striped pattern"]
    assert engine.targets == ["", "", ""]
    assert len(engine.preserve) == 7 * 3 and "a dotted pattern" in engine.preserve  # every other style
    before = _params(engine)
    logs = engine.apply_edit()
    after = _params(engine)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"network.unet." + n for n in engine.selected} and len(changed) == 8
    assert all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in changed)
    # the engine's edit is the formula on its own text rows
    c_e, c_t = aligned_rows(engine.encode_text(engine.prompts), engine.encode_text(engine.targets))
    c_p = preserved_rows(engine.encode_text(engine.preserve))
    originals = engine.teacher.tensors()  # {name inside the network: original value}
    for name in engine.selected:
        W = originals["unet." + name]
        assert torch.equal(W, before["network.unet." + name])
        assert torch.equal(
            after["network.unet." + name], uce_weight(W, c_e, c_t.double() @ W.double().T, c_p, 1.0, 0.1, 0.5)
        )
    assert 0 < logs["erase_residual"] < 1 and 0 < logs["preserve_drift"] < 1
    # as_original swaps the originals in, and the edit back
    with engine.as_original():
        assert all(torch.equal(p, before[n]) for n, p in engine.named_parameters())
    assert all(torch.equal(p, after[n]) for n, p in engine.named_parameters())


def test_a_large_preserve_scale_keeps_the_preserved_outputs():
    def drift(preserve_scale: float) -> float:
        engine = make_uce(metadata=TOY_META, preserve_scale=preserve_scale)
        rows = preserved_rows(engine.encode_text(engine.preserve))  # (M, D)
        before = _params(engine)
        engine.apply_edit()
        after = _params(engine)
        errors = []
        for name in engine.selected:
            key = "network.unet." + name
            errors.append(((rows @ (after[key] - before[key]).T).norm() / (rows @ before[key].T).norm()).item())
        return max(errors)

    assert drift(1e6) < 1e-4 < 1e-2 < drift(0.0)


def test_anchors_give_the_targets_and_bad_inputs_name_the_key():
    engine = make_uce(metadata=TOY_META, anchor="dotted", preserve=None)
    assert engine.targets == ["something in dotted style", "an image in dotted style", "a dotted pattern"]
    assert engine.preserve == []
    assert make_uce(concept="Van Gogh", anchor="art", template="style").targets == ["art Style"]
    assert make_uce(concept="cat").preserve == [""]  # off the canvas: the empty prompt, as the reference
    with pytest.raises(ValueError, match=r"^model\.params\.anchor: 'circle' is a toy object, 'striped' a toy style"):
        make_uce(metadata=TOY_META, anchor="circle")
    with pytest.raises(ValueError, match=r"^model\.params\.anchor: 'zebra' is not a toy canvas style"):
        make_uce(metadata=TOY_META, anchor="zebra")
    with pytest.raises(ConfigError, match=r"^model\.params\.optimizer_config: a closed-form edit trains nothing"):
        make_uce(optimizer_config={"target": "torch.optim.Adam"})
    with pytest.raises(ConfigError, match=r"^model\.params\.base_learning_rate: ClosedFormEngine does not use it"):
        make_uce(base_learning_rate=1e-3)
    xattn = {"target": "unlearn.selection.TrainMethod", "params": {"train_method": "xattn"}}
    with pytest.raises(
        ConfigError, match=r"^model\.params\.selector_config: .*attn2\.to_out\.0\.bias has shape \(32,\)"
    ):
        make_uce(selector_config=xattn)


def test_several_concepts_at_once_and_the_export(tmp_path):
    from unlearn.engine.export import load_erased_weights

    engine = make_uce(concept="striped;circle", separator=";", metadata=TOY_META)
    assert len(engine.prompts) == 6 and not set(engine.preserve) & set(engine.prompts)
    assert "a square" in engine.preserve and "a dotted pattern" in engine.preserve
    engine.apply_edit()
    tensors, meta = load_erased_weights(engine.export(tmp_path))
    params = dict(engine.network.unet.named_parameters())
    assert set(tensors) == set(engine.selected) and all(torch.equal(v, params[n]) for n, v in tensors.items())
    assert meta["method"] == "uce" and meta["concept"] == "striped;circle" and meta["lamb"] == "0.5"
    assert meta["train_method"] == "esd-x-strict" and meta["token_rows"] == "from_last"
