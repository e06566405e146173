"""Erasing with the text encoder (AdvUnlearn's module): what trains, the frozen side, gradients through
the trained conditions (adversarial soft-token prompts included), export and its application."""

import re

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from tests.unit.esd_helpers import ROOT, SMOKE, esd_params, make_engine, smoke_params
from tests.unit.test_uce import make_uce
from unlearn.attacks.base import AdversarialPrompt
from unlearn.attacks.tokens import PLACEHOLDER, InjectedTokens, injected
from unlearn.config import ConfigError, instantiate_from_config, load_configs
from unlearn.data.canvas import CANVAS
from unlearn.engine.export import apply_erased_weights, load_erased_weights
from unlearn.engine.finetune import FineTuneEngine
from unlearn.engine.loading import load_model
from unlearn.selection import TextEncoder, TrainMethod

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = "conditioner.embedders.0.transformer."  # the smoke model's CLIP text model inside the engine
PROMPTS = ["a striped circle", "a dotted star", ""]
N_SELECTED = 18  # the smoke CLIP's one layer (16 tensors) and its final LayerNorm (2)
TOY_META = {"objects": list(CANVAS.objects), "styles": list(CANVAS.styles)}
ADVERSARY = {
    "target": "unlearn.engine.adversarial.AdversarialPrompts",
    "params": {"attack": {"target": "unlearn.attacks.ConceptInversion", "params": {"steps": 2}}, "share": 1.0},
}


def crossattn(engine, prompts=PROMPTS) -> torch.Tensor:
    with torch.no_grad():
        return engine.conditioning_for(prompts)["crossattn"]


def train_step(engine: FineTuneEngine, optimizer: torch.optim.Optimizer) -> None:
    batch = engine.erasure_batch()[0]
    loss = engine.objective(engine.student_eps, engine.teacher_eps, batch).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.fixture(scope="module")
def trained():
    """ESD on the smoke model's text encoder after 3 steps: (engine, parameters before, conditions before)."""
    engine = make_engine(train_method="text_encoder", preserve="dotted", negative_guidance=4.0)
    before = {n: p.detach().clone() for n, p in engine.named_parameters()}
    original = crossattn(engine)
    optimizer = torch.optim.Adam(engine.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        train_step(engine, optimizer)
    return engine, before, original


def test_only_the_text_encoder_trains_and_the_network_stays_bit_identical(trained):
    engine, before, _ = trained
    trainable = {n for n, p in engine.named_parameters() if p.requires_grad}
    assert trainable == {PREFIX + n for n in engine.selected} and len(engine.selected) == N_SELECTED
    # AdvUnlearn's text_encoder_full: the transformer layers and the final norm, never the embeddings
    assert all(n.startswith(("encoder.layers.0.", "final_layer_norm.")) for n in engine.selected)
    changed = {n for n, p in engine.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    assert all(torch.equal(p, before["network." + n]) for n, p in engine.network.named_parameters())
    originals = engine.teacher.tensors()  # the frozen copy: the text encoder's selected tensors only
    assert len(originals) == N_SELECTED
    assert all(torch.equal(v, before["conditioner." + n]) for n, v in originals.items())


def test_as_original_restores_the_original_conditioning_exactly(trained):
    engine, _, original = trained
    now = crossattn(engine)
    assert (now - original).abs().max() > 1e-3  # the trained encoder reads the prompts differently
    with engine.as_original():
        assert torch.equal(crossattn(engine), original)
    assert torch.equal(crossattn(engine), now)  # and back
    engine._cond_table = None  # the frozen side's table comes from the original encoder, even rebuilt now
    table = engine._conds()
    with engine.as_original():
        expected = crossattn(engine, engine.prompts)
    assert torch.equal(table["concept"]["crossattn"], expected)


@pytest.mark.parametrize("is_trainable", [True, False])  # SD configs freeze the embedder: run under no_grad
def test_gradients_reach_the_text_encoder_through_the_trained_conditions(is_trainable):
    params = smoke_params()
    params["conditioner_config"]["params"]["emb_models"][0]["is_trainable"] = is_trainable
    engine = make_engine(**params, train_method="text_encoder", preserve="dotted")
    batch, _ = engine.erasure_batch()
    assert set(batch.trained) == {"concept", "null", "preserve"}
    for role in batch.trained:
        trained_side, frozen_side = batch.trained[role]["crossattn"], getattr(batch, role)["crossattn"]
        assert trained_side.requires_grad and not frozen_side.requires_grad
        assert torch.allclose(trained_side, frozen_side, atol=1e-6)  # nothing trained yet: the same conditions
    assert batch.erase_prompt is batch.trained["concept"]
    engine.objective(engine.student_eps, engine.teacher_eps, batch).loss.backward()
    grads = [p.grad for p in engine.trainable_parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in engine.network.parameters())


def test_adversarial_soft_token_prompts_are_encoded_by_the_trained_encoder_with_grad():
    engine = make_engine(train_method="text_encoder", ddim_steps=4, adversary_config=ADVERSARY)
    adversary, text = engine.adversary, f"a {PLACEHOLDER} thing"
    tokens = InjectedTokens(vectors={0: torch.randn(1, 32, generator=torch.Generator().manual_seed(0))})
    adversary.found = [AdversarialPrompt(source="a striped thing", text=text, tokens=tokens)]
    with torch.no_grad():
        adversary.conds = adversary.encode(engine)  # as a search leaves them
    searched = adversary.conds["crossattn"].clone()  # (1, L, D)

    batch, _ = engine.erasure_batch()  # share 1: every erase row is the adversarial prompt
    rows = batch.trained_concept["crossattn"]
    assert batch.erase_prompt is batch.trained_concept and rows.requires_grad
    assert torch.allclose(rows, searched.expand_as(rows), atol=1e-6)
    fc1 = dict(engine.conditioner.named_parameters())["embedders.0.transformer.encoder.layers.0.mlp.fc1.weight"]
    (grad,) = torch.autograd.grad(rows.square().sum(), [fc1], retain_graph=True)
    assert grad.abs().sum() > 0  # through the soft token's prompt into the encoder

    optimizer = torch.optim.Adam(engine.trainable_parameters(), lr=1e-2)
    loss = engine.objective(engine.student_eps, engine.teacher_eps, batch).loss
    loss.backward()
    optimizer.step()
    again = engine.erasure_batch()[0].trained_concept["crossattn"]
    with torch.no_grad(), injected(engine.conditioner, tokens):
        expected = engine.conditioning_for([text])["crossattn"]
    assert torch.allclose(again, expected.expand_as(again), atol=1e-6)  # encoded anew by the trained encoder
    assert (again[0] - searched[0]).abs().max() > 1e-3  # not the conditions computed at the search


def test_export_round_trips_onto_a_fresh_model(trained, tmp_path):
    engine, _, original = trained
    engine.export_diffusers = True
    try:
        path = engine.export(tmp_path)
    finally:
        engine.export_diffusers = False
    tensors, meta = load_erased_weights(path)
    assert sorted(tensors) == sorted("text_encoder." + n for n in engine.selected)
    assert meta["train_method"] == "text_encoder" and meta["concept"] == "striped" and meta["preserve"] == "dotted"
    fresh = make_engine()  # ESD-x on the same base weights
    unet_before = {n: p.detach().clone() for n, p in fresh.network.named_parameters()}
    assert torch.equal(crossattn(fresh), original)
    assert apply_erased_weights(fresh, path)["train_method"] == "text_encoder"
    assert torch.allclose(crossattn(fresh), crossattn(engine), atol=1e-6, rtol=0)
    assert all(torch.equal(p, unet_before[n]) for n, p in fresh.network.named_parameters())
    # plain transformers (pipe.text_encoder): the names after the prefix are the text model's own
    text_model = make_engine().conditioner.embedders[0].transformer
    own = {k.removeprefix("text_encoder."): v for k, v in tensors.items()}
    missing, unexpected = text_model.load_state_dict(own, strict=False)
    assert unexpected == [] and len(missing) == len(text_model.state_dict()) - N_SELECTED
    saved = dict(CLIPTextModel.from_pretrained(str(tmp_path / "text_encoder")).named_parameters())
    assert all(torch.equal(saved[n], own[n]) for n in own)  # export_diffusers: <run>/text_encoder/
    torch.manual_seed(0)  # the scripts' --weights: load_model on the same (seeded) base weights
    loaded = load_model([SMOKE], weights=path)
    assert torch.allclose(crossattn(loaded), crossattn(engine), atol=1e-6, rtol=0)
    # a file written under transformers < 5.6 (names nested under text_model.) applies too
    nested = tmp_path / "nested.safetensors"
    save_file({"text_encoder.text_model." + k: v for k, v in own.items()}, str(nested))
    older = make_engine()
    apply_erased_weights(older, nested)
    assert torch.allclose(crossattn(older), crossattn(engine), atol=1e-6, rtol=0)


def test_a_file_naming_what_the_model_lacks_fails_on_that_key_and_changes_nothing(tmp_path):
    fresh = make_engine()
    before = crossattn(fresh)
    good = "text_encoder.encoder.layers.0.mlp.fc1.weight"
    cases = [
        ("text_encoder.encoder.layers.7.mlp.fc1.weight",
         r"parameter 'text_encoder\.encoder\.layers\.7\.mlp\.fc1\.weight' is not in the model's text_encoder "
         r"\(CLIPTextModel\)"),
        ("text_encoder_2.encoder.layers.0.mlp.fc1.weight",
         r"'text_encoder_2\.encoder\.layers\.0\.mlp\.fc1\.weight' is for a text encoder the model does not have "
         r"\(its text encoders: \['text_encoder'\]\)"),
    ]  # fmt: skip
    for bad, match in cases:
        save_file({good: torch.zeros(64, 32), bad: torch.zeros(2)}, str(tmp_path / "mixed.safetensors"))
        with pytest.raises(ValueError, match=match):
            apply_erased_weights(fresh, tmp_path / "mixed.safetensors")
    assert torch.equal(crossattn(fresh), before)  # the good tensor was not applied either


@pytest.mark.parametrize(
    "selector, match",
    [
        ({"target": "unlearn.selection.TextEncoder", "params": {"layers": [1]}},
         r"^model\.params\.selector_config\.params\.layers: \[1\] is out of range; the text encoder has layers 0\.\.0"),
        ({"target": "unlearn.selection.TextEncoder", "params": {"layers": [0, 0]}},
         r"^model\.params\.selector_config\.params\.layers: expected null or distinct layer indices"),
        ({"target": "unlearn.selection.TextEncoder", "params": {"embedder": 3}},
         r"^model\.params\.selector_config\.params\.embedder: 3 is out of range; the conditioner has 1 embedder"),
        ({"target": "unlearn.selection.TextEncoder", "params": {"embedder": -1}},
         r"^model\.params\.selector_config\.params\.embedder: expected the index of a conditioner embedder"),
        ({"target": "unlearn.selection.TrainMethod", "params": {"train_method": "xattn", "layers": [0]}},
         r"^model\.params\.selector_config\.params\.layers: apply to train_method text_encoder only"),
    ],
)  # fmt: skip
def test_bad_text_encoder_selections_name_their_key(selector, match):
    params = esd_params(**{**smoke_params(), "concept": "striped", "ddim_steps": 2, "pool_size": 2})
    params["selector_config"] = selector
    with pytest.raises(ConfigError, match=match):
        FineTuneEngine(**params)


def test_an_embedder_that_is_no_clip_text_encoder_is_refused_and_so_is_a_closed_form_edit():
    conditioner = nn.Module()
    conditioner.embedders = nn.ModuleList([nn.Linear(2, 2)])
    with pytest.raises(ConfigError, match=r"embedder: emb_models\[0\] is a Linear; only a CLIP text embedder"):
        TextEncoder(embedder=0).site(nn.Linear(2, 2), conditioner)
    with pytest.raises(
        ConfigError, match=r"params\.embedder: the conditioner has no CLIP text embedder \(\['Linear'\]\)"
    ):
        TextEncoder().site(nn.Linear(2, 2), conditioner)
    uce = {"target": "unlearn.selection.TrainMethod", "params": {"train_method": "text_encoder"}}
    with pytest.raises(ConfigError, match="selects tensors of the conditioner; ClosedFormEngine changes tensors of the "
                       "network only"):  # fmt: skip
        make_uce(selector_config=uce)


@pytest.mark.parametrize("nested", [False, True])  # transformers >= 5.6 names, and < 5.6 (under text_model.)
def test_layers_pick_their_transformer_layers(nested):
    sizes = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "max_position_embeddings": 8}
    config = CLIPTextConfig(**sizes, num_hidden_layers=3, num_attention_heads=2, bos_token_id=0, eos_token_id=1)
    root = CLIPTextModel(config)
    if nested:
        root, root.text_model = nn.Module(), root
    full = TextEncoder()(root)
    assert len(full) == 3 * 16 + 2 and not any("embeddings" in n for n in full)
    assert any(n.endswith("final_layer_norm.weight") for n in full)
    picked = TextEncoder(layers=[2, 0])(root)
    assert len(picked) == 32 and {re.search(r"layers\.(\d+)\.", n).group(1) for n in picked} == {"0", "2"}
    assert TextEncoder(layers=[2, 0]).name == "text_encoder_layers_0_2"
    assert TrainMethod("text_encoder_full").name == "text_encoder" == TrainMethod("text_encoder").name


def test_preserve_auto_keeps_the_other_concepts_of_the_erased_ones_kind():
    engine = make_engine(concept="outlined", metadata=TOY_META, preserve="auto", ddim_steps=2)
    others = [s for s in CANVAS.styles if s != "outlined"]
    assert len(engine.preserve) == 3 * len(others) and not any("outlined" in p for p in engine.preserve)
    assert all(any(s in p for p in engine.preserve) for s in others)
    with pytest.raises(ConfigError, match="model.params.preserve: auto keeps the toy canvas's other concepts"):
        make_engine(preserve="auto", ddim_steps=2)  # no canvas metadata


def test_advunlearn_configs_train_the_text_encoder_against_soft_token_prompts(tmp_path):
    key = "model.params.adversary_config.params"
    cfg = load_configs(
        [SMOKE, ROOT / "configs/methods/esd_x.yaml", ROOT / "configs/methods/adversarial.yaml",
         ROOT / "configs/methods/esd_text_encoder.yaml"],
        ["concept=striped", "ddim_steps=2", "lr=1e-3", "model.params.loss_fn_config=null",
         "model.params.preserve=dotted", "lightning.callbacks.toy_benchmark=null", f"{key}.every_n_steps=2",
         f"{key}.images_per_prompt=2", f"{key}.prompts_per_search=2", f"{key}.attack.params.steps=2",
         f"{key}.attack.params.images_per_step=2"],
    )  # fmt: skip
    torch.manual_seed(0)
    engine = instantiate_from_config(cfg.model, _path="model")
    assert engine.selector.name == "text_encoder" and engine.preserve_source == "own"
    assert engine.objective.preserve_weight == 0.3
    before = {n: p.detach().clone() for n, p in engine.named_parameters()}
    pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path)).fit(engine)  # fmt: skip
    assert engine.adversary.searches == 2 and all(f.tokens.vectors is not None for f in engine.adversary.found)
    changed = {n for n, p in engine.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {PREFIX + n for n in engine.selected}  # the UNet is untouched
