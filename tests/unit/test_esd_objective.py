"""The ESD loss: pure targets, the batched objective against hand computations."""

import pytest
import torch

from unlearn.objectives import ErasureBatch, ESDObjective, cat_conds, esd_target, preserve_target


def test_targets_by_hand():
    e0, ec, ef = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.5, 0.5])
    # e0 - eta (ec - e0) with eta = 2: [1 - 4, 2 + 6]
    assert torch.equal(esd_target(e0, ec, 2.0), torch.tensor([-3.0, 8.0]))
    # erase-from anchor: ef - eta (ec - e0)
    assert torch.equal(esd_target(e0, ec, 2.0, e_anchor=ef), torch.tensor([-3.5, 6.5]))
    assert torch.equal(preserve_target(e0, ec, 1.0), ec)
    assert torch.equal(preserve_target(e0, ec, 2.0), torch.tensor([5.0, -4.0]))


def _stub_eps(weight):
    """eps(x, sigma, cond) = weight * x + cond["crossattn"].mean(dims) / sigma: prompt-dependent, simple."""

    def eps(x, sigma, cond):
        c = cond["crossattn"].mean(dim=(1, 2))[:, None, None, None]  # (B, 1, 1, 1)
        return weight * x + c / sigma[:, None, None, None]

    return eps


def _cond(value, b=2):
    return {"crossattn": torch.full((b, 3, 4), float(value))}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return ErasureBatch(
        x=torch.randn(2, 1, 2, 2, generator=g), sigma=torch.tensor([0.5, 2.0]), concept=_cond(1.0), null=_cond(0.0)
    )


def test_objective_equals_hand_computation(batch):
    teacher, student = _stub_eps(1.0), _stub_eps(1.5)
    out = ESDObjective(negative_guidance=2.0)(student, teacher, batch)
    x, s = batch.x, batch.sigma
    e0, ec = teacher(x, s, batch.null), teacher(x, s, batch.concept)
    hand = ((student(x, s, batch.concept) - (e0 - 2.0 * (ec - e0))) ** 2).mean()
    assert torch.allclose(out.loss, hand) and out.loss.ndim == 0
    assert set(out.logs) == {"loss_erase"}


def test_weighting_scales_each_sample_by_lambda_sigma_squared(batch):
    from unlearn.diffusion.loss_weighting import EpsWeighting, VWeighting

    teacher, student = _stub_eps(1.0), _stub_eps(1.5)
    x, s = batch.x, batch.sigma
    e0, ec = teacher(x, s, batch.null), teacher(x, s, batch.concept)
    per_sample = ((student(x, s, batch.concept) - (e0 - (ec - e0))) ** 2).flatten(1).mean(1)  # (2,)
    v = ESDObjective(weighting=VWeighting())(student, teacher, batch).loss
    # v weighting: lambda sigma^2 = sigma^2 + 1 -> weights 1.25 and 5 on sigmas 0.5 and 2
    assert torch.allclose(v, (torch.tensor([1.25, 5.0]) * per_sample).mean())
    # EpsWeighting (lambda = sigma^-2) is the paper's unweighted eps MSE
    plain = ESDObjective()(student, teacher, batch).loss
    assert torch.allclose(ESDObjective(weighting=EpsWeighting())(student, teacher, batch).loss, plain)
    assert not torch.allclose(v, plain)


def test_concept_anchor_is_null_anchor_with_eta_minus_one(batch):
    teacher, student = _stub_eps(1.0), _stub_eps(0.7)
    a = ESDObjective(negative_guidance=2.0, anchor="concept")(student, teacher, batch).loss
    b = ESDObjective(negative_guidance=1.0, anchor="null")(student, teacher, batch).loss
    assert torch.allclose(a, b)


def test_erase_from_student_sees_from_prompt_and_anchors_on_it(batch):
    batch.erase_from = _cond(3.0)
    seen = []
    teacher = _stub_eps(1.0)

    def student(x, sigma, cond):
        seen.append(cond["crossattn"][:, 0, 0].tolist())
        return _stub_eps(0.5)(x, sigma, cond)

    out = ESDObjective(negative_guidance=1.5)(student, teacher, batch)
    assert seen == [[3.0, 3.0]]
    x, s = batch.x, batch.sigma
    e0, ec, ef = (teacher(x, s, c) for c in (batch.null, batch.concept, batch.erase_from))
    hand = ((_stub_eps(0.5)(x, s, batch.erase_from) - (ef - 1.5 * (ec - e0))) ** 2).mean()
    assert torch.allclose(out.loss, hand)


def test_preserve_term(batch):
    batch.preserve = _cond(-2.0)
    teacher, student = _stub_eps(1.0), _stub_eps(1.2)
    out = ESDObjective(negative_guidance=1.0, preserve_guidance=1.0, preserve_weight=0.5)(student, teacher, batch)
    x, s = batch.x, batch.sigma
    keep = ((student(x, s, batch.preserve) - teacher(x, s, batch.preserve)) ** 2).mean()
    assert torch.allclose(out.logs["loss_preserve"], keep)
    assert torch.allclose(out.loss, out.logs["loss_erase"] + 0.5 * keep)


def test_preserve_on_own_latents_by_hand(batch):
    g = torch.Generator().manual_seed(1)
    batch.preserve = _cond(-2.0)
    batch.preserve_x, batch.preserve_sigma = torch.randn(2, 1, 2, 2, generator=g), torch.tensor([1.0, 3.0])
    teacher, student = _stub_eps(1.0), _stub_eps(1.2)
    out = ESDObjective(preserve_guidance=2.0, preserve_weight=0.5)(student, teacher, batch)
    px, ps = batch.preserve_x, batch.preserve_sigma
    e0, ep = teacher(px, ps, batch.null), teacher(px, ps, batch.preserve)
    keep = ((student(px, ps, batch.preserve) - (e0 + 2.0 * (ep - e0))) ** 2).mean()
    assert torch.allclose(out.logs["loss_preserve"], keep)
    on_concept_x = (
        (
            student(batch.x, batch.sigma, batch.preserve)
            - preserve_target(
                teacher(batch.x, batch.sigma, batch.null), teacher(batch.x, batch.sigma, batch.preserve), 2.0
            )
        )
        ** 2
    ).mean()
    assert not torch.allclose(keep, on_concept_x)  # the preserve latents, not the concept's, were used
    x, s = batch.x, batch.sigma
    erase = (
        (student(x, s, batch.concept) - esd_target(teacher(x, s, batch.null), teacher(x, s, batch.concept), 1.0)) ** 2
    ).mean()
    assert torch.allclose(out.logs["loss_erase"], erase) and torch.allclose(out.loss, erase + 0.5 * keep)


def test_null_anchor_term_by_hand(batch):
    teacher, student = _stub_eps(1.0), _stub_eps(1.3)
    out = ESDObjective(negative_guidance=1.0, null_weight=2.0)(student, teacher, batch)
    x, s = batch.x, batch.sigma
    null = ((student(x, s, batch.null) - teacher(x, s, batch.null)) ** 2).mean()
    assert null > 0 and torch.allclose(out.logs["loss_null"], null)
    assert torch.allclose(out.loss, out.logs["loss_erase"] + 2.0 * null)
    plain = ESDObjective(negative_guidance=1.0)(student, teacher, batch)
    assert "loss_null" not in plain.logs and torch.allclose(plain.loss, out.logs["loss_erase"])


def test_teacher_runs_once_batched(batch):
    calls = []

    def teacher(x, sigma, cond):
        calls.append(x.shape[0])
        return _stub_eps(1.0)(x, sigma, cond)

    batch.erase_from, batch.preserve = _cond(3.0), _cond(4.0)
    ESDObjective()(_stub_eps(1.0), teacher, batch)
    assert calls == [8]  # [null, concept, from, preserve] x B=2 in one call
    calls.clear()
    batch.preserve_x, batch.preserve_sigma = torch.zeros(2, 1, 2, 2), torch.ones(2)
    ESDObjective()(_stub_eps(1.0), teacher, batch)
    assert calls == [10]  # [null, concept, from] and [null, preserve] on the preserve latents, x B=2


def test_bad_arguments():
    with pytest.raises(ValueError, match="anchor"):
        ESDObjective(anchor="uncond")
    with pytest.raises(ValueError, match="null_weight: expected a number >= 0, got -1"):
        ESDObjective(null_weight=-1)
    with pytest.raises(ValueError, match="preserve_weight: expected a number >= 0, got -0.5"):
        ESDObjective(preserve_weight=-0.5)
    with pytest.raises(ValueError, match="different keys"):
        cat_conds([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
