"""Concept ablation on the smoke model: the anchor prompt role of `FineTuneEngine` (pairing, x_t
from the anchors' trajectories) and `ConceptAblationObjective`'s loss against a hand computation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.unit.esd_helpers import esd_params, make_engine, smoke_params
from unlearn.config import ConfigError
from unlearn.data.canvas import CANVAS
from unlearn.engine.finetune import FineTuneEngine

TOY_META = {"objects": list(CANVAS.objects), "styles": list(CANVAS.styles)}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_ca(prior_weight: float = 0.0, target_model: str = "original", **kw: Any) -> FineTuneEngine:
    """Concept ablation of "striped" on the smoke model (6 DDIM steps, a pool of 4, seed 0), plus ``kw``;
    built like `make_engine`'s ESD, so both draw the same trajectories from the same prompts."""
    anchors = {key: kw.pop(key) for key in ("anchor", "anchor_prompts") if key in kw}  # the engine's, not ESD's
    torch.manual_seed(0)
    settings = {**smoke_params(), "concept": "striped", "ddim_steps": 6, "pool_size": 4, "seed": 0, **kw}
    params = {**esd_params(**settings), **anchors}
    params["objective_config"] = {
        "target": "unlearn.objectives.ablation.ConceptAblationObjective",
        "params": {"prior_weight": prior_weight, "target_model": target_model},
    }
    return FineTuneEngine(**params)


def _rows(engine: FineTuneEngine, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return engine.conditioning_for(prompts)["crossattn"]


def test_anchor_prompts_are_paired_and_x_t_comes_from_the_anchors_trajectories():
    ca = make_ca(anchor="dotted", metadata=TOY_META, batch_size=2)
    esd = make_engine(concept="dotted", metadata=TOY_META, batch_size=2)  # ESD of the anchor concept itself
    assert (
        ca.anchor_prompts
        == esd.prompts
        == ["something in dotted style", "an image in dotted style", "a dotted pattern"]
    )
    assert ca.prompts == ["something in striped style", "an image in striped style", "a striped pattern"]
    for _ in range(3):  # refills included (pool of 4, batches of 2)
        batch, steps = ca.erasure_batch()
        idx = ca.pool.prompts[ca.pool.cursor - 2 : ca.pool.cursor].cpu()  # the prompts of this batch
        reference, reference_steps = esd.erasure_batch()
        # the same noise, steps and trajectories as a run on the anchor prompts alone
        assert torch.equal(batch.x, reference.x) and torch.equal(batch.sigma, reference.sigma)
        assert torch.equal(steps, reference_steps)
        assert torch.equal(batch.anchor["crossattn"], reference.concept["crossattn"])
        # each sample's concept row is the concept prompt its anchor stands in for
        assert torch.equal(batch.concept["crossattn"], _rows(ca, [ca.prompts[i] for i in idx]))
        assert torch.equal(batch.anchor["crossattn"], _rows(ca, [ca.anchor_prompts[i] for i in idx]))


def test_without_an_anchor_the_toy_concept_is_removed_and_elsewhere_replaced():
    assert make_ca(concept="circle", metadata=TOY_META).anchor_prompts == [
        "an object",
        "an image of an object",
        "a picture of an object",
    ]
    assert make_ca(concept="striped", metadata=TOY_META).anchor_prompts == ["something", "an image", "a pattern"]
    off_canvas = make_ca(concept="cat", anchor="dog", template="object")
    assert off_canvas.prompts == ["An image of cat"] and off_canvas.anchor_prompts == ["An image of dog"]
    two = make_ca(concept="striped;circle", separator=";", anchor="dotted;square", metadata=TOY_META)
    assert two.anchor_prompts[0] == "something in dotted style" and two.anchor_prompts[-1] == "a picture of a square"
    given = make_ca(concept="cat", anchor_prompts=["a dog"])
    assert given.anchor_prompts == ["a dog"]


@pytest.mark.parametrize("prior_weight, target_model", [(0.0, "original"), (0.5, "original"), (0.5, "trained")])
def test_loss_equals_a_hand_computation(prior_weight, target_model):
    engine = make_ca(
        anchor="dotted", metadata=TOY_META, batch_size=2, prior_weight=prior_weight, target_model=target_model
    )
    with torch.no_grad():  # move the trained tensors off the original so student and teacher differ
        for name in engine.selected:
            param = dict(engine.network.named_parameters())[engine._prefix + name]
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    batch, _ = engine.erasure_batch()
    out = engine.objective(engine.student_eps, engine.teacher_eps, batch)

    x, sigma = batch.x, batch.sigma
    with torch.no_grad():
        e_anchor = engine.teacher_eps(x, sigma, batch.anchor)  # eps*(x_t, c)
        s_anchor = engine.student_eps(x, sigma, batch.anchor)  # eps_theta(x_t, c), for target_model trained
        target = e_anchor if target_model == "original" else s_anchor
        s_concept = engine.student_eps(x, sigma, batch.concept)  # eps_theta(x_t, c*)
    ablate = ((s_concept - target) ** 2).mean()
    prior = ((s_anchor - e_anchor) ** 2).mean()
    expected = ablate + prior_weight * prior
    assert ablate > 0 and (prior_weight == 0 or prior > 0)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out.logs["loss_ablate"], ablate, rtol=1e-5, atol=1e-9)
    assert ("loss_prior" in out.logs) == (prior_weight > 0)
    out.loss.backward()
    assert all(p.grad is not None for p in engine.trainable_parameters())


def test_preserve_prompts_are_kept_at_the_original():
    engine = make_ca(anchor="dotted", metadata=TOY_META, preserve="a circle")
    batch, _ = engine.erasure_batch()
    out = engine.objective(engine.student_eps, engine.teacher_eps, batch)
    # the network is still the original: only the ablation term is non-zero
    assert out.logs["loss_preserve"] == 0
    expected = F.mse_loss(
        engine.student_eps(batch.x, batch.sigma, batch.concept), engine.teacher_eps(batch.x, batch.sigma, batch.anchor)
    )
    torch.testing.assert_close(out.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-9)


def test_the_export_records_the_anchor(tmp_path):
    from unlearn.engine.export import load_erased_weights

    engine = make_ca(anchor="dotted", metadata=TOY_META, train_method="esd-x-strict")
    tensors, meta = load_erased_weights(engine.export(tmp_path))
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in tensors) and len(tensors) == 8
    assert meta["method"] == "ca" and meta["anchor"] == "dotted" and meta["target_model"] == "original"
    assert meta["anchor_prompts"] == "something in dotted style | an image in dotted style | a dotted pattern"


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"anchor": "zebra"}, r"^model\.params\.anchor: 'zebra' is not a toy canvas style; choose from \["),
        ({"anchor": "circle"}, r"^model\.params\.anchor: 'circle' is a toy object, 'striped' a toy style"),
        ({"anchor": "striped"}, r"^model\.params\.anchor: 'striped' is the erased concept itself"),
        (
            {"anchor": "dotted", "anchor_prompts": ["x"]},
            r"^model\.params\.anchor_prompts: give anchor or anchor_prompts",
        ),
        ({"anchor_prompts": ["x"]}, r"^model\.params\.anchor_prompts: 1 prompts for 3 training prompts"),
        (
            {"anchor": "dotted;solid", "separator": ";"},
            r"^model\.params\.anchor: 2 anchors \['dotted', 'solid'\] for 1",
        ),
        ({"anchor": "dotted", "erase_from": "a circle"}, r"^model\.params\.erase_from: with anchor prompts"),
    ],
)
def test_bad_anchors_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        make_ca(metadata=TOY_META, **kw)


def test_an_anchor_off_the_canvas_must_be_named_and_esd_refuses_one():
    with pytest.raises(ValueError, match=r"^model\.params\.anchor: missing: 'cat' is not a toy canvas concept"):
        make_ca(concept="cat")
    torch.manual_seed(0)
    esd = {**esd_params(**smoke_params(), concept="striped", ddim_steps=6, metadata=TOY_META), "anchor": "dotted"}
    with pytest.raises(ConfigError, match=r"^model\.params\.anchor: ESDObjective does not use anchor prompts"):
        FineTuneEngine(**esd)
