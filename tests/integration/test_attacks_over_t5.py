"""Attacks through T5 on the tiny SD3 and Flux models (CLIP + T5, random weights): the placeholder's
span of sentencepiece tokens takes one vector, hard CLIP tokens reach T5 as their text, and every
attack runs with T5 attacked, asserted on values."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.integration.tiny_pipelines import IMAGE_SIZE
from unlearn.attacks import P4D, AttackTarget, ConceptInversion, InjectedTokens, RingABell, UnlearnDiffAtk
from unlearn.attacks.denoising import DenoisingLoss
from unlearn.attacks.inversion import _initial
from unlearn.attacks.p4d import EpsMatchingLoss
from unlearn.attacks.tokens import batched_tokens, injected, text_encoders, with_placeholders

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a striped circle"
TOL = 1e-6

pytestmark = pytest.mark.usefixtures("one_thread")


def _engine(arch: str, folder: Path):
    from unlearn.engine.loading import load_model

    config = str(ROOT / "configs" / "models" / f"{arch}.yaml")
    return load_model([config], overrides=[f"model_path={folder}", f"model.params.image_size={IMAGE_SIZE}"]).eval()


@pytest.fixture(scope="module")
def sd3(tiny_sd3_pipeline):
    return _engine("sd3", tiny_sd3_pipeline)


@pytest.fixture(scope="module")
def flux(tiny_flux_pipeline):
    return _engine("flux", tiny_flux_pipeline)


def _t5(engine):
    encoders = text_encoders(engine.conditioner)
    assert type(encoders[-1].embedder).__name__ == "T5TextEmbedder"
    return encoders, encoders[-1]


def _close(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _never(images: torch.Tensor) -> torch.Tensor:
    return torch.zeros(images.shape[0], dtype=torch.bool)


def _target(model, **kw) -> AttackTarget:
    kw = {"detector": _never, "target_images": _images(), "prompts": [PROMPT], **kw}
    return AttackTarget(model=model, concept="striped", **kw)


# ---------------------------------------------------------------------------------- injection
def test_t5_spells_the_placeholder_as_a_span_at_either_end_and_is_attacked(sd3, caplog):
    with caplog.at_level("WARNING"):
        encoders, t5 = _t5(sd3)
    assert [a.embedder for a in encoders] == list(sd3.conditioner.embedders)  # CLIP-L, CLIP-G and T5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    pieces = tuple(t5.embedder.tokenizer.convert_tokens_to_ids(["\u2581s", "k", "s"]))
    assert t5.spellings == (pieces,)  # the same at the start of a text and after a word
    for position, starts in (("prefix", [0, 3]), ("suffix", [3, 6])):  # "a striped circle" is 3 pieces
        ids = t5.embedder.tokenize([with_placeholders(PROMPT, 2, position)])
        assert t5.placeholder_spans(ids) == [[(s, 3) for s in starts]]
    assert t5.placeholders_in("sks sksa asks (sks, sks") == 2  # "sksa" and "asks" are other words
    assert not t5.shares_vocabulary(encoders[0]) and encoders[1].shares_vocabulary(encoders[0])


class _SplittingEncoder(torch.nn.Module):
    """T5's tokenizer in front of an encoder that is no T5 (say one that pools at the end-of-text token)."""

    def __init__(self, t5):
        super().__init__()
        self.tokenizer, self.tokenize = t5.tokenizer, t5.tokenize
        self.transformer = torch.nn.Module()
        self.transformer.config = SimpleNamespace(model_type="bert")
        self.transformer.table = torch.nn.Embedding(300, 8)
        self.transformer.get_input_embeddings = lambda: self.transformer.table


def test_an_encoder_that_splits_the_placeholder_and_is_no_t5_is_refused(flux):
    _, t5 = _t5(flux)
    conditioner = SimpleNamespace(embedders=[t5.embedder, _SplittingEncoder(t5.embedder)])
    with pytest.raises(
        ValueError, match=r"text encoder 1 of the conditioner: _SplittingEncoder: the placeholder 'sks' is 3"
    ):
        text_encoders(conditioner)


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_rows_injected_at_t5_spans_equal_the_words_written_out(sd3, flux, position):
    words = "red cat"
    for engine in (sd3, flux):
        encoders, t5 = _t5(engine)
        vectors = {i: e.weight[e.token_ids(words)] for i, e in enumerate(encoders)}  # one token a word, each table
        assert all(v.shape[0] == 2 for v in vectors.values())
        text = with_placeholders(PROMPT, 2, position)
        with torch.no_grad(), injected(engine.conditioner, InjectedTokens(vectors=vectors)):
            got = engine.conditioning_for([text, "a dotted star"])
        written = f"{words} {PROMPT}" if position == "prefix" else f"{PROMPT} {words}"
        with torch.no_grad():
            expected = engine.conditioning_for([written, "a dotted star"])
        assert _close(got, expected) <= TOL  # T5's rows, the CLIP rows and the pooled vectors alike


def test_hard_clip_tokens_reach_t5_as_their_text(sd3):
    encoders, t5 = _t5(sd3)
    clip = encoders[0]
    red_cat, zebra = clip.token_ids("red cat"), clip.token_ids("zebra")
    assert len(red_cat) == 2 and len(zebra) == 1 and len(t5.token_ids("zebra")) > 1  # one CLIP token, 5 T5 pieces
    text = with_placeholders(PROMPT, 2, "suffix")
    with torch.no_grad(), injected(sd3.conditioner, InjectedTokens(ids=red_cat)):
        got = sd3.conditioning_for([text])
    with torch.no_grad():
        assert _close(got, sd3.conditioning_for([f"{PROMPT} red cat"])) <= TOL
    # per prompt (as the ASR samples found prompts): a CLIP token of several T5 pieces, and a prompt without
    per_prompt = batched_tokens([InjectedTokens(ids=zebra), None, InjectedTokens(ids=red_cat[:1])])
    texts = [with_placeholders(PROMPT, 1), "a dotted star", with_placeholders("a star", 1)]
    with torch.no_grad(), injected(sd3.conditioner, per_prompt):
        got = sd3.conditioning_for(texts)
    with torch.no_grad():
        expected = sd3.conditioning_for([f"zebra {PROMPT}", "a dotted star", "red a star"])
    assert _close(got, expected) <= TOL


def test_a_soft_t5_vector_replaces_the_span_and_gets_the_gradient(flux):
    encoders, t5 = _t5(flux)
    clip = encoders[0]
    vector = torch.randn(1, t5.weight.shape[1], generator=torch.Generator().manual_seed(0), requires_grad=True)
    tokens = InjectedTokens(vectors={0: clip.weight[clip.token_ids("cat")].detach(), 1: vector})
    with injected(flux.conditioner, tokens):
        cond = flux.conditioning_for([with_placeholders(PROMPT, 1), "a dotted star"])
    # what T5 gives for a tokenizer with a one-token placeholder: the vector, the prompt, </s>, padding
    ids = t5.embedder.tokenize([PROMPT, "a dotted star"])  # (2, 512)
    with torch.no_grad():
        rows = t5.weight[ids]  # (2, L, D)
        first = torch.cat([vector.detach(), rows[0, :-1]])[None]
        expected = t5.embedder.transformer(inputs_embeds=torch.cat([first, rows[1:]])).last_hidden_state
    assert float((cond["crossattn"].detach() - expected).abs().max()) <= TOL
    cond["crossattn"][0].pow(2).sum().backward()
    assert vector.grad is not None and float(vector.grad.abs().sum()) > 0
    assert t5.weight.grad is None and t5.embedder.is_trainable is False  # the encoder stays frozen
    # "(sks": CLIP's BPE finds the placeholder, T5 spells it without its word-initial piece: refused
    with pytest.raises(
        ValueError, match=r"T5TextEmbedder finds \[0\] placeholders \('sks'\) where the prompts hold \[1\]"
    ):
        with injected(flux.conditioner, tokens):
            flux.conditioning_for(["a (sks) circle"])


# ---------------------------------------------------------------------------------- attacks
def test_unlearndiffatk_on_sd3_lowers_its_loss_and_t5_reads_the_found_prompt(sd3, caplog):
    target = _target(sd3)
    attack = UnlearnDiffAtk(num_tokens=2, steps=20, lr=0.5, steps_per_timestep=10**6, images_per_step=6, check_every=0)
    with caplog.at_level("WARNING", logger="unlearn.attacks"):
        (found,) = attack(target)
    assert not caplog.records and found.steps == 20
    encoders, t5 = _t5(sd3)
    with torch.no_grad(), injected(sd3.conditioner, found.tokens):
        injected_t5 = sd3.conditioning_for([found.text])["crossattn"][:, 77:]
        written_t5 = sd3.conditioning_for([found.readable])["crossattn"][:, 77:]
    assert float((injected_t5 - written_t5).abs().max()) <= TOL  # T5 reads the tokens as the prompt's text

    start = (1e-3 * torch.randn(2, encoders[0].vocab_size, generator=torch.Generator().manual_seed(0))).argmax(1)

    def value(ids):
        loss = DenoisingLoss(sd3, target.target_images, 6, 10**6, torch.Generator().manual_seed(0))
        with torch.no_grad(), injected(sd3.conditioner, InjectedTokens(ids=ids)):
            return float(loss(sd3.conditioning_for([found.text])))

    assert value(found.tokens.ids) < value(start.tolist())


def test_p4d_on_flux_brings_the_erased_prediction_towards_the_original(flux):
    erased = copy.deepcopy(flux)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in erased.network.named_parameters():
            if "context_embedder" in name or "add_k_proj" in name:  # the text stream's entry
                p.add_(torch.randn(p.shape, generator=g) * p.std())
    target = _target(erased, original=flux)
    attack = P4D(num_tokens=3, steps=25, lr=0.1, steps_per_timestep=10**6, images_per_step=6, check_every=0)
    (found,) = attack(target)
    assert found.text == with_placeholders(PROMPT, 3) and len(found.tokens.ids) == 3

    def value(ids):
        with torch.no_grad():
            source = flux.conditioning_for([PROMPT])
        loss = EpsMatchingLoss(erased, flux, source, target.target_images, 6, 10**6, torch.Generator().manual_seed(5))
        with torch.no_grad(), injected(erased.conditioner, InjectedTokens(ids=ids)):
            return float(loss(erased.conditioning_for([found.text])))

    assert value(found.tokens.ids) < value(found.extra["start_ids"])


def test_ring_a_bell_on_flux_searches_through_t5_alone(flux):
    # Flux's text sequence is T5's: the search can only move it through the tokens' text
    attack = RingABell(num_tokens=3, population=16, generations=8, batch_size=16)
    encoders = text_encoders(flux.conditioner)
    goal = attack.encode(flux, [PROMPT])[0] + 3.0 * attack.concept_vector(flux, [(PROMPT, "a circle")])
    ids, history = attack.search(flux, encoders, goal, torch.Generator().manual_seed(0))
    assert history[-1] < history[0] and not set(ids) & set(encoders[0].banned_ids)
    readable = attack.encode(flux, [encoders[0].decode(ids)])[0]  # the found prompt typed as text
    assert float(torch.linalg.vector_norm(readable - goal)) == pytest.approx(history[-1], rel=1e-5)


def test_concept_inversion_on_flux_learns_a_t5_token(flux):
    target = _target(flux)
    (found,) = ConceptInversion(steps=30, lr=0.05, images_per_step=6)(target)
    encoders, t5 = _t5(flux)
    learned = found.tokens.vectors
    assert found.text == "a sks circle" and learned[1].shape == (1, t5.weight.shape[1])
    start = {i: _initial(e, "striped", 1) for i, e in enumerate(encoders)}  # each table's own "striped"
    assert float((learned[1] - start[1]).abs().max()) > 1e-3  # the T5 token moved

    def value(vectors, seed):
        loss = DenoisingLoss(flux, target.target_images, 6, 10**6, torch.Generator().manual_seed(seed))
        with torch.no_grad(), injected(flux.conditioner, InjectedTokens(vectors=vectors)):
            return float(loss(flux.conditioning_for([found.text])))

    assert value(learned, 5) < value(start, 5)
    only_t5 = {0: start[0], 1: learned[1]}  # the T5 token alone lowers the loss too
    assert value(only_t5, 5) < value(start, 5)
