"""P4D, Ring-A-Bell and concept inversion on the tiny smoke model, asserted on values."""

import copy

import pytest
import torch

from tests.unit.esd_helpers import smoke_params
from unlearn.attacks import P4D, AttackTarget, ConceptInversion, InjectedTokens, RingABell, text_encoders
from unlearn.attacks.denoising import DenoisingLoss
from unlearn.attacks.inversion import _initial, placeholder_text
from unlearn.attacks.p4d import EpsMatchingLoss, interleave, nearest_rows
from unlearn.attacks.ring_a_bell import concept_pairs
from unlearn.attacks.tokens import PLACEHOLDER, injected
from unlearn.engine.diffusion import DiffusionEngine

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a striped circle"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    params = smoke_params()
    params["sampler_config"]["params"]["num_steps"] = 2
    return DiffusionEngine(**params).eval()


@pytest.fixture(scope="module")
def erased(model):
    """The smoke model with its cross-attention keys and values perturbed: it no longer predicts
    the original's noise for a prompt."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in out.network.named_parameters():
            if "attn2.to_k" in name or "attn2.to_v" in name:
                p.add_(torch.randn(p.shape, generator=g) * p.std())
    return out


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _never(images: torch.Tensor) -> torch.Tensor:
    return torch.zeros(images.shape[0], dtype=torch.bool)


def _target(model, prompts=(PROMPT,), **kw) -> AttackTarget:
    kw = {"detector": _never, "target_images": _images(), **kw}
    return AttackTarget(model=model, concept="striped", prompts=list(prompts), **kw)


# P4D


def test_p4d_k_puts_a_placeholder_after_every_k_words():
    assert interleave("a b c d e f g", 3) == "a b c sks d e f sks g"
    assert interleave("a striped circle", 3) == "a striped circle sks"
    assert interleave("a circle", 3) == "a circle sks"  # shorter than every: one token at the end
    assert P4D(mode="k", every=2).text_for("an outlined red circle") == "an outlined sks red circle sks"
    assert P4D(mode="n", num_tokens=2).text_for(PROMPT) == "sks sks a striped circle"
    assert P4D(mode="n", num_tokens=3, with_prompt=False).text_for(PROMPT) == "sks sks sks"


def test_nearest_rows_is_cosine_and_skips_banned_ids():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.21], [0.1, 0.0]])
    x = torch.tensor([[3.0, 3.2], [0.3, 0.0]])  # row 0: L2-nearest is row 1, cosine-nearest row 2
    assert nearest_rows(x, table).tolist() == [2, 0]
    assert nearest_rows(x, table, banned=[0, 2]).tolist() == [1, 3]


def _matching_value(erased, model, text, images, ids, seed=5):
    """The eps-matching loss of ``ids`` at the placeholders of ``text`` on a fixed draw of its own."""
    with torch.no_grad():
        source = model.conditioning_for([PROMPT])
    loss = EpsMatchingLoss(erased, model, source, images, 6, 10**6, torch.Generator().manual_seed(seed))
    with torch.no_grad(), injected(erased.conditioner, InjectedTokens(ids=ids)):
        return float(loss(erased.conditioning_for([text])))


def test_p4d_n_finds_hard_tokens_that_bring_the_erased_prediction_to_the_original(model, erased):
    target = _target(erased, original=model)
    attack = P4D(mode="n", num_tokens=4, steps=40, lr=0.1, steps_per_timestep=10**6, images_per_step=6, check_every=0)
    (found,) = attack(target)
    assert attack.name == "p4d-n" and found.text == "sks sks sks sks a striped circle" and found.steps == 40
    (encoder,) = text_encoders(erased.conditioner)
    assert len(found.tokens.ids) == 4 and all(0 <= i < encoder.vocab_size for i in found.tokens.ids)
    assert not set(found.tokens.ids) & {*encoder.special_ids, encoder.placeholder_id}
    assert found.readable.endswith(" a striped circle") and PLACEHOLDER not in found.readable
    # on a draw the search never saw, the found tokens match the original far better than the start
    start = _matching_value(erased, model, found.text, target.target_images, found.extra["start_ids"])
    end = _matching_value(erased, model, found.text, target.target_images, found.tokens.ids)
    assert end < 0.6 * start


def test_p4d_k_keeps_the_prompt_words_and_lowers_the_loss(model, erased):
    prompt = "a striped circle on a plain canvas"
    target = _target(erased, prompts=[prompt], original=model)
    attack = P4D(mode="k", steps=30, lr=0.1, steps_per_timestep=10**6, images_per_step=6, check_every=0)
    (found,) = attack(target)
    assert found.text == "a striped circle sks on a plain sks canvas" and len(found.tokens.ids) == 2
    words = found.readable.split()
    assert words[:3] == ["a", "striped", "circle"] and words[4:7] == ["on", "a", "plain"] and words[-1] == "canvas"
    start = _matching_value(erased, model, found.text, target.target_images, found.extra["start_ids"])
    assert _matching_value(erased, model, found.text, target.target_images, found.tokens.ids) < start


def test_p4d_without_images_fits_the_original_models_samples_and_stops_on_the_detector(model, erased):
    calls = []

    def detector(images):
        calls.append(images.shape[0])
        return torch.ones(images.shape[0], dtype=torch.bool)

    attack = P4D(num_tokens=2, steps=20, num_images=2, images_per_step=2, check_every=3, check_seeds=[7])
    target = _target(erased, original=model, detector=detector, target_images=None)
    assert torch.equal(attack._images(target, PROMPT), model.generate([PROMPT] * 2, seeds=[20_000, 20_001]).cpu())
    (found,) = attack(target)
    assert found.steps == 3 and found.detected_during_search and calls == [1]


def test_p4d_checks_its_params_and_target(model):
    with pytest.raises(ValueError, match=r"mode: expected one of \['n', 'k'\]"):
        P4D(mode="x")
    with pytest.raises(ValueError, match="every: expected a positive integer"):
        P4D(every=0)
    with pytest.raises(ValueError, match="weight_decay: expected a number >= 0"):
        P4D(weight_decay=-1)
    with pytest.raises(ValueError, match="attack p4d-n: it matches the original model; pass --original"):
        P4D().check(_target(model))
    with pytest.raises(ValueError, match="num_tokens: 16 learned tokens in 'a striped circle' do not fit"):
        P4D(num_tokens=16, steps=1)(_target(model, original=model))  # the smoke encoder holds 14 tokens


def test_frozen_text_encoders_pass_gradients_to_soft_tokens(model):
    frozen = copy.deepcopy(model)
    (encoder,) = text_encoders(frozen.conditioner)
    encoder.embedder.is_trainable = False  # as SD's configs: the conditioner runs it under no_grad
    text = f"{PLACEHOLDER} {PROMPT}"
    assert not frozen.conditioning_for([text])["crossattn"].requires_grad
    vectors = torch.randn(1, encoder.weight.shape[1], requires_grad=True)
    with injected(frozen.conditioner, InjectedTokens(vectors={0: vectors})):
        frozen.conditioning_for([text])["crossattn"].sum().backward()
    assert vectors.grad.abs().sum() > 0 and encoder.embedder.is_trainable is False  # restored


# Ring-A-Bell


def test_ring_a_bell_pairs_come_from_the_canvas_fields_or_the_prompts(model):
    fields = [{"obj": "circle", "style": "striped"}]
    pairs = concept_pairs(_target(model, fields=fields))
    assert len(pairs) == 6 and ("a striped circle", "a circle") in pairs
    assert ("a circle in striped style", "a circle") in pairs and (
        "a circle with a striped texture",
        "a circle",
    ) in pairs
    obj = AttackTarget(model=model, concept="circle", prompts=[PROMPT], detector=_never, fields=fields)
    assert ("a striped circle", "a striped object") in concept_pairs(obj)
    plain = _target(model, prompts=[PROMPT, "a dotted star"])
    assert concept_pairs(plain) == [(PROMPT, "a circle")]
    with pytest.raises(ValueError, match="pairs: the prompts do not name 'striped'; give"):
        RingABell(num_tokens=2, generations=1, population=2)(_target(model, prompts=["a dotted star"]))


def test_ring_a_bell_concept_vector_is_the_mean_difference(model):
    attack = RingABell(batch_size=1)
    pairs = [(PROMPT, "a circle"), ("a striped star", "a star")]
    f = attack.encode(model, [p for pair in pairs for p in pair])  # (4, L, D)
    expected = ((f[0] - f[1]) + (f[2] - f[3])) / 2
    torch.testing.assert_close(attack.concept_vector(model, pairs), expected)


def test_ring_a_bell_fitness_improves_over_generations_with_valid_ids(model):
    attack = RingABell(num_tokens=4, population=32, generations=40, batch_size=10)
    encoders = text_encoders(model.conditioner)
    goal = attack.encode(model, [PROMPT])[0] + 3.0 * attack.concept_vector(model, [(PROMPT, "a circle")])
    ids, history = attack.search(model, encoders, goal, torch.Generator().manual_seed(0))
    assert len(history) == 41 and all(b <= a for a, b in zip(history, history[1:]))  # the elite survives
    assert history[-1] < 0.92 * history[0]
    (encoder,) = encoders
    assert len(ids) == 4 and all(0 <= i < encoder.vocab_size for i in ids)
    assert not set(ids) & {*encoder.special_ids, encoder.placeholder_id}
    again = attack.distances(model, encoders, torch.tensor([ids]), goal)
    assert float(again[0]) == pytest.approx(history[-1], rel=1e-5)  # the reported distance is the found prompt's
    assert attack.search(model, encoders, goal, torch.Generator().manual_seed(0))[0] == ids  # seeded


def test_ring_a_bell_returns_hard_tokens_per_prompt(model):
    fields = [{"obj": "circle", "style": "striped"}, {"obj": "star", "style": "striped"}]
    target = _target(model, prompts=[PROMPT, "a striped star"], fields=fields, seed=3)
    found = RingABell(num_tokens=3, population=8, generations=3)(target)
    assert [f.text for f in found] == ["sks sks sks"] * 2 and all(len(f.tokens.ids) == 3 for f in found)
    assert found[0].tokens.ids != found[1].tokens.ids and found[0].extra["pairs"] == 12
    assert all(f.extra["distance_end"] <= f.extra["distance_start"] for f in found)
    with pytest.raises(ValueError, match=r"mutation_rate: expected a probability in \[0, 1\]"):
        RingABell(mutation_rate=2)
    with pytest.raises(ValueError, match=r"pairs: expected a non-empty list of \[with, without\] prompt pairs"):
        RingABell(pairs=[["a striped circle"]])
    with pytest.raises(ValueError, match="population: expected an integer >= 2"):
        RingABell(population=1)


# Concept inversion


def test_placeholders_replace_the_concept_word_or_come_first():
    assert placeholder_text("an outlined circle", "outlined", 1) == "an sks circle"
    assert placeholder_text("A Striped circle, striped", "striped", 2) == "A sks sks circle, striped"
    assert placeholder_text("a dotted star", "striped", 1) == "sks a dotted star"
    assert placeholder_text("stripedness", "striped", 1) == "sks stripedness"  # whole words only


def test_concept_inversion_lowers_the_denoising_loss_and_writes_vectors_per_encoder(model):
    target = _target(model, prompts=[PROMPT, "a dotted star"])
    attack = ConceptInversion(steps=41, lr=0.05, images_per_step=6)
    found = attack(target)
    assert [f.text for f in found] == ["a sks circle", "sks a dotted star"]
    assert [f.steps for f in found] == [21, 20] and found[0].readable == "a <S*> circle"
    (encoder,) = text_encoders(model.conditioner)
    learned = found[0].tokens
    assert set(learned.vectors) == {0} and learned.vectors[0].shape == (1, 32)
    assert torch.equal(found[1].tokens.vectors[0], learned.vectors[0])  # one inversion for every prompt
    assert not learned.vectors[0].requires_grad
    start = InjectedTokens(vectors={0: encoder.weight.detach()[encoder.token_ids("striped")]})

    def value(tokens, seed):  # on a draw the search never saw
        loss = DenoisingLoss(model, target.target_images, 6, 10**6, torch.Generator().manual_seed(seed))
        with torch.no_grad(), injected(model.conditioner, tokens):
            return float(loss(model.conditioning_for([found[0].text])))

    assert value(learned, 5) < 0.995 * value(start, 5) and value(learned, 6) < 0.995 * value(start, 6)


def test_concept_inversion_starts_from_the_init_word(model):
    (encoder,) = text_encoders(model.conditioner)
    ids = encoder.token_ids("polka dots")
    assert len(ids) == 2
    start = _initial(encoder, "polka dots", 3)
    assert start.shape == (3, 32) and torch.allclose(start[2], encoder.weight[ids].mean(0))
    (found,) = ConceptInversion(num_tokens=2, init_word="dots", steps=1, lr=1e-9)(_target(model))
    assert found.text == "a sks sks circle" and found.tokens.vectors[0].shape == (2, 32)
    torch.testing.assert_close(found.tokens.vectors[0][1], encoder.weight[encoder.token_ids("dots")[0]].detach())
    with pytest.raises(ValueError, match="init_word: expected a word"):
        ConceptInversion(init_word=" ")
    with pytest.raises(ValueError, match="it needs images of 'striped'"):
        ConceptInversion().check(_target(model, target_images=None))
