"""Attacks on a tiny model: token injection, UnlearnDiffAtk, paraphrases, the ASR, saved prompts."""

from pathlib import Path

import pytest
import torch

from tests.unit.esd_helpers import smoke_params
from unlearn.attacks import AttackTarget, InjectedTokens, Paraphrases, UnlearnDiffAtk, text_encoders, with_placeholders
from unlearn.attacks.asr import load_adversarial, rate, run_attack
from unlearn.attacks.denoising import DenoisingLoss
from unlearn.attacks.tokens import PLACEHOLDER, TokenInjection, batched_tokens, injected
from unlearn.engine.diffusion import DiffusionEngine
from unlearn.eval.metrics import wilson_interval

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    params = smoke_params()
    params["sampler_config"]["params"]["num_steps"] = 2
    return DiffusionEngine(**params).eval()


def test_hard_tokens_at_placeholders_equal_the_tokens_written_out(model):
    (encoder,) = text_encoders(model.conditioner)
    ids = [320, 1929]  # two real vocabulary entries
    text = with_placeholders("a striped circle", 2)
    assert text == f"{PLACEHOLDER} {PLACEHOLDER} a striped circle"
    with injected(model.conditioner, InjectedTokens(ids=ids)):
        got = model.conditioning_for([text, "a dotted star"])["crossattn"]
    tokens = encoder.embedder.tokenize([text, "a dotted star"])
    tokens[0, 1:3] = torch.tensor(ids)  # the placeholders follow the start token
    written = encoder.embedder.transformer(input_ids=tokens).last_hidden_state
    assert torch.equal(got, written)  # bit for bit, and the prompt without placeholders untouched
    assert not torch.equal(model.conditioning_for([text])["crossattn"], written[:1])  # hook removed afterwards


def test_soft_vectors_carry_gradients_and_placeholder_counts_are_checked(model):
    (encoder,) = text_encoders(model.conditioner)
    vectors = torch.randn(3, encoder.weight.shape[1], requires_grad=True)
    with TokenInjection([encoder], InjectedTokens(vectors={0: vectors})):
        model.conditioning_for([with_placeholders("a striped circle", 3)])["crossattn"].sum().backward()
        with pytest.raises(ValueError, match=r"holds \[2\] placeholders \('sks'\); the attack has 3"):
            model.conditioning_for([with_placeholders("a striped circle", 2)])
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    batched = batched_tokens([InjectedTokens(ids=[5, 6]), None, InjectedTokens(ids=[7, 8])])
    assert batched.ids == [[5, 6], None, [7, 8]]  # hard tokens stay ids, each prompt its own
    rows = batched.rows(encoder, 3)
    assert rows.shape == (3, 2, encoder.weight.shape[1])
    assert torch.equal(rows[2], encoder.weight[[7, 8]]) and rows[1].abs().sum() == 0
    soft = batched_tokens([None, InjectedTokens(vectors={0: vectors.detach()})])
    assert soft.vectors[0].shape == (2, 3, encoder.weight.shape[1]) and soft.vectors[0][0].abs().sum() == 0
    with pytest.raises(ValueError, match="mix hard and soft tokens"):
        batched_tokens([InjectedTokens(ids=[5, 6, 7]), InjectedTokens(vectors={0: vectors.detach()})])


def _target(model, detector=None, prompts=("a striped circle",), **kw):
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return AttackTarget(
        model=model,
        concept="striped",
        prompts=list(prompts),
        detector=detector or (lambda x: torch.zeros(x.shape[0], dtype=torch.bool)),
        target_images=images,
        **kw,
    )


def test_unlearndiffatk_finds_real_tokens_that_lower_the_denoising_loss(model):
    target = _target(model)
    attack = UnlearnDiffAtk(num_tokens=2, steps=30, lr=0.5, steps_per_timestep=30, images_per_step=6, check_every=0)
    (found,) = attack(target)
    assert found.text == with_placeholders("a striped circle", 2) and len(found.tokens.ids) == 2
    assert all(0 <= i < 49408 for i in found.tokens.ids) and found.steps == 30
    # the same fixed draw of images, noise levels and noise: the found tokens beat where the search began
    (encoder,) = text_encoders(model.conditioner)
    g = torch.Generator().manual_seed(0)
    start = (1e-3 * torch.randn(2, encoder.vocab_size, generator=g)).argmax(dim=1).tolist()  # the search's start
    loss = DenoisingLoss(model, target.target_images, 6, 10**6, torch.Generator().manual_seed(5))

    def value(ids):
        with torch.no_grad(), injected(model.conditioner, InjectedTokens(ids=ids)):
            return float(loss(model.conditioning_for([found.text])))

    assert value(found.tokens.ids) < value(start)


def test_unlearndiffatk_stops_once_the_detector_fires(model):
    calls = []

    def detector(images):
        calls.append(images.shape[0])
        return torch.ones(images.shape[0], dtype=torch.bool)

    attack = UnlearnDiffAtk(num_tokens=1, steps=50, check_every=5, check_seeds=[7])
    (found,) = attack(_target(model, detector))
    assert found.steps == 5 and found.detected_during_search and calls == [1]


class _FakeModel:
    """generate: images of +1 where the prompt names "style", else -1 (a detector reads the sign)."""

    conditioner = None

    def generate(self, prompts, seeds=None):
        return torch.stack([torch.full((3, 4, 4), 1.0 if "style" in p else -1.0) for p in prompts])


def test_paraphrases_keep_the_phrasing_that_shows_the_concept():
    target = AttackTarget(
        model=_FakeModel(),
        concept="striped",
        prompts=["a striped circle", "a striped star"],
        detector=lambda x: x.flatten(1).mean(1) > 0,
        fields=[{"obj": "circle", "style": "striped"}, {"obj": "star", "style": "striped"}],
    )
    found = Paraphrases(check_seeds=[1, 2])(target)
    assert [f.text for f in found] == ["a circle in striped style", "a star in striped style"]
    assert found[0].extra["candidates"]["a striped circle"] == 0 and found[0].detected_during_search


def test_run_attack_measures_before_and_after_on_held_out_seeds_and_saves_the_prompts(tmp_path):
    target = AttackTarget(
        model=_FakeModel(),
        concept="striped",
        prompts=["a striped circle"],
        detector=lambda x: x.flatten(1).mean(1) > 0,
        fields=[{"obj": "circle", "style": "striped"}],
    )
    result = run_attack(Paraphrases(check_seeds=[1]), target, seeds=[100, 101, 102], out_dir=tmp_path)
    assert result["before"]["k"] == 0 and result["before"]["n"] == 3 and result["after"]["asr"] == 100.0
    assert result["after"]["ci95"] == pytest.approx(list(wilson_interval(3, 3)))
    assert result["prompts"][0]["hits_after"] == [True, True, True]
    (saved,) = load_adversarial(tmp_path / "adversarial.safetensors")
    assert saved.text == "a circle in striped style" and saved.tokens is None
    assert (tmp_path / "grid.png").is_file()
    with pytest.raises(ValueError, match="the attack searches with seeds"):
        run_attack(Paraphrases(check_seeds=[100]), target, seeds=[100])


def test_saved_hard_tokens_load_back(model, tmp_path):
    from unlearn.attacks.asr import save_adversarial
    from unlearn.attacks.base import AdversarialPrompt

    found = [AdversarialPrompt(source="a", text="sks a", tokens=InjectedTokens(ids=[3]), readable="x a")]
    save_adversarial(found, tmp_path / "adv.safetensors", "striped", "test")
    (back,) = load_adversarial(tmp_path / "adv.safetensors")
    assert back.tokens.ids == [3] and back.text == "sks a" and back.readable == "x a"


def test_rate_and_wilson():
    assert rate([True, False, False, False]) == {
        "asr": 25.0,
        "k": 1,
        "n": 4,
        "ci95": pytest.approx(list(wilson_interval(1, 4))),
    }
    lo, hi = wilson_interval(17, 100)
    assert lo == pytest.approx(10.9, abs=0.05) and hi == pytest.approx(25.5, abs=0.05)
    assert wilson_interval(0, 32)[0] == 0.0 and wilson_interval(32, 32)[1] == 100.0


def test_attack_params_are_checked():
    with pytest.raises(ValueError, match=r"num_tokens: expected a positive integer"):
        UnlearnDiffAtk(num_tokens=0)
    with pytest.raises(ValueError, match="it needs images of 'striped'"):
        UnlearnDiffAtk().check(AttackTarget(model=None, concept="striped", prompts=["x"], detector=None))
    with pytest.raises(FileNotFoundError, match="prompts_file: no such file"):
        Paraphrases(prompts_file=str(Path("/nonexistent/prompts.txt")))


def test_unlearndiffatk_never_picks_special_tokens_or_the_placeholder(model):
    (encoder,) = text_encoders(model.conditioner)
    banned_ids = sorted(set(encoder.special_ids) | {encoder.placeholder_id})
    assert len(banned_ids) >= 3
    logits = torch.zeros(2, encoder.vocab_size)
    logits[0, banned_ids[0]], logits[0, 5] = 10.0, 1.0  # the best logit is a special token
    logits[1, encoder.placeholder_id], logits[1, 7] = 10.0, 1.0
    banned = torch.zeros(encoder.vocab_size, dtype=torch.bool)
    banned[banned_ids] = True
    assert UnlearnDiffAtk._ids(logits, banned) == [5, 7]
    (found,) = UnlearnDiffAtk(num_tokens=3, steps=2, check_every=0)(_target(model))
    assert not set(banned_ids) & set(found.tokens.ids)
