"""Adversarial erasure: searches run on the model as it trains, and the erase term sees their prompts."""

import lightning.pytorch as pl
import pytest
import torch

from tests.unit.esd_helpers import make_engine
from unlearn.config import ConfigError
from unlearn.objectives import ErasureBatch

pytestmark = pytest.mark.usefixtures("one_thread")

ATTACK = {
    "target": "unlearn.attacks.UnlearnDiffAtk",
    "params": {"num_tokens": 2, "steps": 3, "steps_per_timestep": 3, "images_per_step": 2, "check_every": 0},
}


def adversary(**params):
    return {"target": "unlearn.engine.adversarial.AdversarialPrompts",
            "params": {"attack": ATTACK, "images_per_prompt": 2, "prompts_per_search": 2, **params}}  # fmt: skip


def fit(engine, steps, tmp_path):
    pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               default_root_dir=str(tmp_path)).fit(engine)  # fmt: skip


def test_searches_run_every_n_steps_and_the_erase_term_sees_their_prompts(tmp_path):
    engine = make_engine(ddim_steps=4, adversary_config=adversary(every_n_steps=2, share=1.0), template="custom",
                         prompt_templates=["{concept}", "a {concept} thing", "{concept} again"])  # fmt: skip
    searched_at = []
    search = engine.adversary.maybe_search

    def spy(model, prompts, concept, step, generator):
        before = engine.adversary.searches
        grads = [None if p.grad is None else p.grad.clone() for p in engine.trainable_parameters()]
        search(model, prompts, concept, step, generator)
        if engine.adversary.searches > before:
            searched_at.append(step)
            for g, p in zip(grads, engine.trainable_parameters()):  # the attack leaves the gradients alone
                assert (g is None and p.grad is None) or torch.equal(g, p.grad)

    engine.adversary.maybe_search = spy
    fit(engine, 5, tmp_path)
    assert searched_at == [0, 2, 4] and engine.adversary.searches == 3
    found = engine.adversary.found
    assert len(found) == 2 and all(f.text.startswith("sks sks ") and len(f.tokens.ids) == 2 for f in found)
    assert engine.adversary.conds["crossattn"].shape[0] == 2
    batch, _ = engine.erasure_batch()  # share 1: every sample's erase term is adversarial
    assert batch.trained_concept is not None and batch.erase_prompt is batch.trained_concept
    assert any(torch.equal(batch.trained_concept["crossattn"][0], c) for c in engine.adversary.conds["crossattn"])
    assert not torch.equal(batch.trained_concept["crossattn"], batch.concept["crossattn"])
    assert engine.erased_metadata()["adversary"] == "unlearndiffatk"


def test_the_objective_trains_on_the_adversarial_prompt_against_the_concept_target():
    engine = make_engine(ddim_steps=4)
    batch, _ = engine.erasure_batch()
    other = engine.conditioning_for(["a dotted star"])
    adversarial = ErasureBatch(**{**batch.__dict__, "trained_concept": other})
    calls = []

    def student(x, sigma, cond):
        calls.append(cond["crossattn"].clone())
        return engine.student_eps(x, sigma, cond)

    plain = engine.objective(engine.student_eps, engine.teacher_eps, batch).loss
    swapped = engine.objective(student, engine.teacher_eps, adversarial).loss
    assert torch.equal(calls[0][:1], other["crossattn"])  # the trained model saw the adversarial prompt
    assert not torch.isclose(plain, swapped)  # against the same target (the teacher's concept)


def test_bad_adversary_settings_name_their_key():
    with pytest.raises(ConfigError, match=r"model\.params\.adversary_config\.params\.share: expected a probability"):
        make_engine(ddim_steps=4, adversary_config=adversary(share=0))
    with pytest.raises(
        ConfigError, match="adversarial prompts stand for the concept's; they do not apply with erase_from"
    ):
        make_engine(ddim_steps=4, adversary_config=adversary(), erase_from="a striped circle")
    with pytest.raises(ConfigError, match="p4d-n needs the original model as a separate network"):
        make_engine(ddim_steps=4, adversary_config=adversary(attack={"target": "unlearn.attacks.P4D"}))


def test_masks_train_against_adversarial_prompts_too(tmp_path):
    from unlearn.config import instantiate_from_config, load_configs

    smoke_model = ["model.params.loss_fn_config=null", "model.params.base_learning_rate=null"]
    steps = "model.params.trajectory_sampler_config.params.num_steps=2"
    cfg = load_configs(
        ["configs/toy/smoke.yaml", "configs/methods/minimalist.yaml"],
        ["concept=striped", *smoke_model, steps, "lightning.callbacks.toy_benchmark=null"],
    )
    cfg.model.params.adversary_config = adversary(every_n_steps=2, share=1.0)
    torch.manual_seed(0)
    engine = instantiate_from_config(cfg.model, _path="model")
    seen = []
    conditioning = engine.conditioning_for
    engine.conditioning_for = lambda prompts, *a: seen.append(list(prompts)) or conditioning(prompts, *a)
    lambdas = {k: v.detach().clone() for k, v in engine.masks.masks().items()}
    fit(engine, 3, tmp_path)
    assert engine.adversary.searches == 2  # steps 0 and 2
    assert all(f.text.startswith("sks sks ") for f in engine.adversary.found)
    assert any(p.startswith("sks sks ") for prompts in seen for p in prompts)  # the adversarial prompts were encoded
    assert any(not torch.equal(v, engine.masks.masks()[k]) for k, v in lambdas.items())  # and the masks trained


def test_the_shipped_adversarial_config_searches_with_concept_inversion_in_the_concept_words_place(tmp_path):
    from unlearn.config import instantiate_from_config, load_configs

    smoke_model = ["model.params.loss_fn_config=null", "model.params.base_learning_rate=null"]
    key = "model.params.adversary_config.params"
    cfg = load_configs(
        ["configs/toy/smoke.yaml", "configs/methods/esd_x.yaml", "configs/methods/adversarial.yaml"],
        ["concept=striped", "ddim_steps=2", *smoke_model, "template=custom",
         "model.params.prompt_templates=['a {concept} thing', 'something {concept}', '{concept} again']",
         "lightning.callbacks.toy_benchmark=null",
         f"{key}.every_n_steps=2", f"{key}.images_per_prompt=2", f"{key}.prompts_per_search=2",
         f"{key}.attack.params.steps=2", f"{key}.attack.params.images_per_step=2"],
    )  # fmt: skip
    assert cfg.model.params.adversary_config.params.attack.target == "unlearn.attacks.ConceptInversion"
    torch.manual_seed(0)
    engine = instantiate_from_config(cfg.model, _path="model")
    fit(engine, 3, tmp_path)
    assert engine.adversary.searches == 2  # steps 0 and 2
    found = engine.adversary.found
    assert len(found) == 2 and all(f.text.split().count("sks") == 1 and "striped" not in f.text for f in found)
    assert all(f.tokens.ids is None and f.tokens.vectors[0].shape == (1, 32) for f in found)  # one soft token
    assert engine.erased_metadata()["adversary"] == "concept_inversion"
