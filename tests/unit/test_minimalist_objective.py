"""MinimalistObjective terms, the sparsity regulariser's gradient, prompt triples, engine groups."""

import math

import lightning.pytorch as pl
import pytest
import torch

from tests.unit.mask_helpers import randomize, tiny_network  # noqa: F401
from unlearn.callbacks import ExportArtifacts
from unlearn.config import instantiate_from_config, load_configs
from unlearn.data.prompt_batches import ConceptPromptTriples
from unlearn.hooks import MaskManager, load_masks
from unlearn.objectives.minimalist import MinimalistObjective

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE, METHOD = "configs/toy/smoke.yaml", "configs/methods/minimalist.yaml"


def test_erase_and_preserve_terms():
    g = torch.Generator().manual_seed(0)
    x_masked, x_target = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    out = MinimalistObjective(beta=0.5).trajectory_loss(x_masked, x_target, n_erase=2)
    erase = ((x_masked[:2] - x_target[:2]) ** 2).mean()
    preserve = ((x_masked[2:] - x_target[2:]) ** 2).mean()
    assert torch.allclose(out.logs["loss_erase"], erase) and torch.allclose(out.logs["loss_preserve"], preserve)
    assert torch.allclose(out.loss, erase + 0.5 * preserve)


@pytest.mark.parametrize("strategy", ["sigmoid", "hard_discrete"])
def test_regulariser_gradient_is_the_expected_off_share(strategy):
    net = tiny_network()
    hookers = [{"target": "unlearn.hooks.AttentionHeadHooker"}]
    manager = MaskManager.from_configs(hookers, strategy=strategy).register(net)
    randomize(manager)
    reg = MinimalistObjective(sparsity_weight=0.3).regulariser(manager)
    reg.backward()
    lams = manager.masks().values()
    n = sum(lam.numel() for lam in lams)
    shift = 0.0 if strategy == "sigmoid" else (2 / 3) * math.log(0.1 / 1.1)  # β log(-γ/ζ)
    for lam in lams:
        s = torch.sigmoid(lam.detach() - shift)
        assert torch.allclose(lam.grad, -0.3 * s * (1 - s) / n)  # d/dλ of w · mean(1 - σ(λ - shift))
    expected = 1 - torch.sigmoid(torch.cat([lam.detach() for lam in lams]) - shift).mean()
    assert float(reg.detach()) == pytest.approx(0.3 * float(expected))


def test_prompt_triples_on_the_toy_canvas_and_custom_prompts():
    ds = ConceptPromptTriples("striped", length=20, seed=1)
    assert len(ds.concept_prompts) == 8 * 6 and len(ds.keep_prompts) == 7 * 8 * 6
    item = ds[3]
    assert "striped" in item["concept"] and "striped" not in item["deconcept"] + item["keep"]
    assert ds[3] == ConceptPromptTriples("striped", length=20, seed=1)[3]
    assert ConceptPromptTriples("circle", length=1)[0]["deconcept"].count("object") == 1
    custom = ConceptPromptTriples("Van Gogh", ["a painting by {concept}"], ["a painting"], ["a dog"], length=2)
    assert custom[0] == {"concept": "a painting by Van Gogh", "deconcept": "a painting", "keep": "a dog"}
    with pytest.raises(ValueError, match="not a toy-canvas concept"):
        ConceptPromptTriples("Van Gogh")


def test_prompt_triples_with_an_anchor_concept():
    plain, anchored = ConceptPromptTriples("circle", length=1), ConceptPromptTriples("circle", length=1, anchor="star")
    assert anchored.concept_prompts == plain.concept_prompts and anchored.keep_prompts == plain.keep_prompts
    assert [p.replace("star", "circle") for p in anchored.deconcept_prompts] == plain.concept_prompts
    assert "a striped star" in anchored.deconcept_prompts
    assert any("star" in k for k in anchored.keep_prompts)  # the anchor's own prompts are still kept
    with pytest.raises(ValueError, match="deconcept_anchor and deconcept_prompts both given"):
        ConceptPromptTriples("Van Gogh", ["a painting by {concept}"], ["a painting"], ["a dog"], anchor="Monet")
    custom = ConceptPromptTriples("Van Gogh", ["a painting by {concept}"], None, ["a dog"], length=1, anchor="Monet")
    assert custom[0]["deconcept"] == "a painting by Monet"


# The smoke model as the masks' model: without its own training recipe (loss, learning rate).
SMOKE_MODEL = ["model.params.loss_fn_config=null", "model.params.base_learning_rate=null"]
TWO_STEPS = "model.params.trajectory_sampler_config.params.num_steps=2"
BINARY = "model.params.strategy={target: unlearn.hooks.strategies.StraightThroughBinaryMask, params: %s}"


def _engine(*overrides):
    cfg = load_configs([SMOKE, METHOD], ["concept=striped", *SMOKE_MODEL, TWO_STEPS, *overrides])
    torch.manual_seed(0)
    return instantiate_from_config(cfg.model, _path="model")


def _fit(model, root):
    """One step; the method's export callback writes into ``root`` (the run directory)."""
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(root),
        callbacks=[ExportArtifacts()],
    )
    trainer.fit(model)


def test_engine_seed_defaults_to_the_global_seed_that_main_py_sets(tmp_path):
    def engine_after_global_seed(global_seed, *overrides):
        torch.manual_seed(global_seed)  # what main.py's --seed does (seed_everything) before building the model
        cfg = load_configs([SMOKE, METHOD], ["concept=striped", *SMOKE_MODEL, TWO_STEPS, *overrides])
        return instantiate_from_config(cfg.model, _path="model")

    five, six, pinned = (
        engine_after_global_seed(5),
        engine_after_global_seed(6),
        engine_after_global_seed(6, "model.params.seed=5"),
    )
    assert (five.seed, six.seed, pinned.seed) == (5, 6, 5)
    assert five._step_seeds() == pinned._step_seeds() != six._step_seeds()
    draws = [[engine.prompts[i] for i in range(16)] for engine in (five, six, pinned)]
    assert draws[0] == draws[2] != draws[1]


def test_engine_learning_rate_zero_switches_a_group_off_and_regulariser_reaches_the_grads(tmp_path):
    hookers = (
        "model.params.hooker_configs=[{target: unlearn.hooks.LinearHooker, params: {module_regex: 'to_(k|v)$'}},"
        "{target: unlearn.hooks.AttentionHeadHooker}]"
    )
    off = _engine(hookers, "model.params.attn_lr=0", "model.params.objective_config.params.sparsity_weight=0")
    assert {h.group for h in off.masks.hookers} == {"linear"}
    off.train()  # the frozen model stays in eval mode (no ucg prompt dropout); the masks train
    assert off.masks.training and not off.network.training and not off.conditioner.training
    assert (
        type(off.network.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn1.processor"]).__name__
        == "AttnProcessor2_0"
    )
    [opt], [sched] = off.configure_optimizers()
    # the method's own mask schedule (minimalist.yaml), not the model config's training one
    assert type(sched["scheduler"]).__name__ == "WarmupCosine" and sched["scheduler"].get_last_lr() == [0.5 / 500]
    assert [(g["name"], g["initial_lr"]) for g in opt.param_groups] == [("linear", 0.5)]
    assert opt.defaults["weight_decay"] == 0.0
    weights = {k: v.clone() for k, v in off.network.state_dict().items()}
    _fit(off, tmp_path / "a")
    assert all(torch.equal(v, weights[k]) for k, v in off.network.state_dict().items())  # base stays frozen
    assert all(not torch.equal(lam.detach(), torch.full_like(lam, 3.0)) for lam in off.masks.masks().values())
    values, meta = load_masks(tmp_path / "a" / "masks.safetensors")
    assert meta["concept"] == "striped" and meta["binarize_mode"] == "global"
    assert float(meta["off_share"]) == pytest.approx(
        round(0.05 * sum(v.numel() for v in values.values())) / sum(v.numel() for v in values.values())
    )

    on = _engine(hookers, "model.params.attn_lr=0", "model.params.objective_config.params.sparsity_weight=2.0")
    _fit(on, tmp_path / "b")
    n = on.masks.num_units()
    for (key, lam_off), lam_on in zip(off.masks.masks().items(), on.masks.masks().values()):
        s = torch.sigmoid(torch.full_like(lam_on, 3.0))  # the gradient was taken at λ = init
        assert torch.allclose(lam_on.grad - lam_off.grad, -2.0 * s * (1 - s) / n, atol=1e-7), key


def test_engine_refuses_bad_settings():
    with pytest.raises(ValueError, match="dpmpp_2m"):
        _engine("model.params.trajectory_sampler_config.target=unlearn.diffusion.samplers.DPMPP2MSampler")
    with pytest.raises(ValueError, match="continues2binary needs a binarize block"):
        _engine("model.params.strategy=continues2binary", "model.params.binarize=null")
    with pytest.raises(ValueError, match="every mask group in hooker_configs has learning rate 0"):
        _engine("model.params.linear_lr=0")
    # the off-share cap is the binary strategy's own setting: no other strategy takes it
    with pytest.raises(ValueError, match="model.params.strategy: cannot build unlearn.hooks.strategies.SigmoidMask"):
        _engine("model.params.strategy={target: unlearn.hooks.strategies.SigmoidMask, params: {max_off_share: 0.05}}")
    with pytest.raises(ValueError, match=r"model.params.strategy.params.max_off_share: expected a share in \[0, 1\)"):
        _engine(BINARY % "{max_off_share: 1.5}")
    with pytest.raises(
        ValueError,
        match="model.params.deconcept_anchor: 'circle' is a toy object, 'striped' a toy style; anchor to another style",
    ):
        _engine("model.params.deconcept_anchor=circle")
    with pytest.raises(ValueError, match="model.params.base_learning_rate: MaskErasureEngine does not use it"):
        _engine("model.params.base_learning_rate=1e-3")  # the masks' rates are per group
    assert _engine("model.params.deconcept_anchor=dotted").prompts[0]["deconcept"].count("dotted") == 1


def test_engine_caps_the_binary_masks_of_every_training_step(tmp_path):
    model = _engine(BINARY % "{max_off_share: 0.25}")
    with torch.no_grad():  # 40% of the units below 0: the cap lets only the lowest 25% be off
        for lam in model.masks.masks().values():
            lam.copy_(torch.linspace(-2.0, 3.0, lam.numel()))
    seen = []
    real_step = model.trajectory_step

    def spy(*args, **kwargs):
        flat = torch.cat([m.detach().flatten() for m in model.masks.mask_values(sample=True).values()])
        seen.append(float((flat == 0).float().mean()))
        return real_step(*args, **kwargs)

    model.trajectory_step = spy
    _fit(model, tmp_path)
    assert seen and all(abs(s - 0.25) < 0.02 for s in seen), seen


def test_erase_target_can_negate_the_concept(tmp_path):
    model = _engine("model.params.target_negation_scale=1.5")
    seen = []
    real_step = model.trajectory_step

    def spy(cond, uc, sigmas, seeds, sampler=None):
        seen.append((cond, uc, sampler))
        return real_step(cond, uc, sigmas, seeds, sampler)

    model.trajectory_step = spy
    _fit(model, tmp_path)
    item = model.prompts[0]  # the one step's batch: n = 1 (concept, keep) pair
    (cond_target, uc_target, sampler), (_, uc_masked, masked_sampler) = seen[:2]
    assert type(sampler.guider).__name__ == "NegatedConceptCFG" and sampler.guider.negation_scale == 1.5
    assert masked_sampler is None  # the masked model: plain CFG, as at inference
    with torch.no_grad():
        negated = model.conditioning_for(["striped"])
        empty = model.unconditional_for([""])
        deconcept = model.conditioning_for([item["deconcept"]])
    for key in negated:  # rows: [empty, empty; concept, empty]: the keep prompt's target is not negated
        assert torch.equal(cond_target[key][:1], deconcept[key])
        assert torch.equal(uc_target[key], torch.cat([empty[key], empty[key], negated[key], empty[key]]))
        assert torch.equal(uc_masked[key], torch.cat([empty[key]] * 2))
    with pytest.raises(ValueError, match="target_negation_scale: expected a number >= 0, got -1"):
        _engine("model.params.target_negation_scale=-1")
    with pytest.raises(ValueError, match="target_negation_scale: expected a number >= 0, got 'strong'"):
        _engine("model.params.target_negation_scale=strong")
