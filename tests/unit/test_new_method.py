"""A new method is one objective and one config: the engine's lifecycle (selection, frozen
original, trajectories, export, toy benchmark wiring) needs no new code."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from unlearn.config import ConfigError, instantiate_from_config, load_configs
from unlearn.engine.export import load_erased_weights
from unlearn.objectives import ErasureBatch, ObjectiveOutput, PredictionObjective

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "toy" / "smoke.yaml"
ESD = ROOT / "configs" / "methods" / "esd_x.yaml"


class NullAnchor(PredictionObjective):
    """The smallest erasure loss: the concept's prediction becomes the frozen null prediction."""

    name = "null-anchor"

    def __init__(self, weight: float = 1.0):
        if weight <= 0:
            raise ValueError(f"weight: expected a number > 0, got {weight!r}")
        self.weight = weight

    def __call__(self, student, teacher, batch: ErasureBatch) -> ObjectiveOutput:
        with torch.no_grad():
            target = teacher(batch.x, batch.sigma, batch.null)
        loss = self.weight * F.mse_loss(student(batch.x, batch.sigma, batch.concept), target)
        return ObjectiveOutput(loss, {"loss_erase": loss.detach()})

    def metadata(self):
        return {"weight": self.weight}


def build(*overrides: str):
    """The method's config is ESD's with its objective block replaced (a method config of its own
    would say the same in a file); later overrides replace the block again."""
    torch.manual_seed(0)
    cfg = load_configs(
        [SMOKE, ESD],
        [
            "concept=striped",
            "ddim_steps=4",
            "model.params.loss_fn_config=null",
            "model.params.objective_config=null",
            f"model.params.objective_config={{target: {__name__}.NullAnchor, params: {{weight: 2.0}}}}",
            *overrides,
        ],
    )
    return instantiate_from_config(cfg.model, _path="model")


def test_a_new_objective_trains_and_exports_through_the_shared_engine(tmp_path):
    engine = build()
    assert isinstance(engine.objective, NullAnchor) and engine.objective.weight == 2.0
    batch, _ = engine.erasure_batch()
    out = engine.objective(engine.student_eps, engine.teacher_eps, batch)
    out.loss.backward()
    grads = [p.grad for p in engine.trainable_parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    path = engine.export(tmp_path)
    tensors, meta = load_erased_weights(path)
    assert meta["method"] == "null-anchor" and meta["weight"] == "2.0" and meta["concept"] == "striped"
    assert set(tensors) == set(engine.selected)


def test_a_bad_objective_argument_names_its_full_key():
    with pytest.raises(ConfigError, match=r"^model\.params\.objective_config\.params\.weight: expected a number > 0"):
        build("model.params.objective_config.params.weight=-1.0")


def test_an_objective_of_another_role_is_refused():
    with pytest.raises(ConfigError, match="MinimalistObjective is not a PredictionObjective"):
        build(
            "model.params.objective_config=null",
            "model.params.objective_config={target: unlearn.objectives.minimalist.MinimalistObjective}",
        )
