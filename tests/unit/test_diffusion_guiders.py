"""Guiders: batching of condition dicts and classifier-free guidance."""

import pytest
import torch

from unlearn.diffusion.guiders import IdentityGuider, NegatedConceptCFG, VanillaCFG, concat_cond


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    sigma = torch.tensor([3.0, 3.0])
    cond = {"crossattn": torch.randn(2, 7, 16, generator=g), "vector": torch.randn(2, 32, generator=g)}
    uc = {"crossattn": torch.zeros(2, 7, 16), "vector": torch.zeros(2, 32)}
    return x, sigma, cond, uc


def toy_denoiser(x, sigma, cond):
    return x * 0.5 + cond["crossattn"].mean(dim=(1, 2))[:, None, None, None] + cond["vector"][:, :1, None, None]


def test_concat_cond_shapes_and_order(inputs):
    _, _, cond, uc = inputs
    both = concat_cond(uc, cond)
    assert both["crossattn"].shape == (4, 7, 16) and both["vector"].shape == (4, 32)
    torch.testing.assert_close(both["crossattn"][:2], uc["crossattn"])
    torch.testing.assert_close(both["crossattn"][2:], cond["crossattn"])


def test_concat_cond_errors(inputs):
    _, _, cond, uc = inputs
    with pytest.raises(ValueError, match="keys"):
        concat_cond({"crossattn": uc["crossattn"]}, cond)
    with pytest.raises(ValueError, match="crossattn"):
        concat_cond({**uc, "crossattn": torch.zeros(2, 7, 8)}, cond)


def test_cfg_combines_uncond_and_cond(inputs):
    x, sigma, cond, uc = inputs
    guider = VanillaCFG(scale=3.0)
    x_in, s_in, c_in = guider.prepare_inputs(x, sigma, cond, uc)
    assert x_in.shape == (4, 4, 8, 8) and s_in.shape == (4,)
    out = guider(toy_denoiser(x_in, s_in, c_in), sigma)
    d_c, d_u = toy_denoiser(x, sigma, cond), toy_denoiser(x, sigma, uc)
    torch.testing.assert_close(out, d_u + 3.0 * (d_c - d_u))


def test_cfg_scale_one_is_the_conditional_prediction(inputs):
    x, sigma, cond, uc = inputs
    guider = VanillaCFG(scale=1.0)
    x_in, s_in, c_in = guider.prepare_inputs(x, sigma, cond, uc)
    assert x_in.shape[0] == 2  # the unconditional half is skipped
    torch.testing.assert_close(guider(toy_denoiser(x_in, s_in, c_in), sigma), toy_denoiser(x, sigma, cond))
    # and the same as the full formula evaluated on the doubled batch
    d_c, d_u = toy_denoiser(x, sigma, cond), toy_denoiser(x, sigma, uc)
    torch.testing.assert_close(guider(toy_denoiser(x_in, s_in, c_in), sigma), d_u + 1.0 * (d_c - d_u))


def test_identity_guider_ignores_uc(inputs):
    x, sigma, cond, uc = inputs
    guider = IdentityGuider()
    x_in, s_in, c_in = guider.prepare_inputs(x, sigma, cond, uc)
    assert x_in is x and c_in is cond
    torch.testing.assert_close(guider(toy_denoiser(x_in, s_in, c_in), sigma), toy_denoiser(x, sigma, cond))


def test_cfg_without_uc_names_it(inputs):
    x, sigma, cond, _ = inputs
    with pytest.raises(ValueError, match="uc"):
        VanillaCFG(2.0).prepare_inputs(x, sigma, cond, None)


def test_negated_concept_cfg_removes_the_concept_direction(inputs):
    x, sigma, cond, uc = inputs
    neg = {k: torch.full_like(v, 0.7) for k, v in uc.items()}
    stacked = NegatedConceptCFG.stack_uc(uc, neg)
    assert torch.equal(stacked["crossattn"], torch.cat([uc["crossattn"], neg["crossattn"]]))
    guider = NegatedConceptCFG(scale=3.0, negation_scale=1.5)
    x_in, s_in, c_in = guider.prepare_inputs(x, sigma, cond, stacked)
    assert x_in.shape == (6, 4, 8, 8) and s_in.shape == (6,)
    out = guider(toy_denoiser(x_in, s_in, c_in), sigma)
    d_c, d_u, d_n = (toy_denoiser(x, sigma, c) for c in (cond, uc, neg))
    torch.testing.assert_close(out, d_u + 3.0 * (d_c - d_u) - 1.5 * (d_n - d_u))
    plain = VanillaCFG(3.0)  # negation scale 0: plain CFG
    zero = NegatedConceptCFG(3.0, 0.0)
    torch.testing.assert_close(
        zero(toy_denoiser(*zero.prepare_inputs(x, sigma, cond, stacked)), sigma),
        plain(toy_denoiser(*plain.prepare_inputs(x, sigma, cond, uc)), sigma),
    )
    with pytest.raises(ValueError, match=r"negated-concept branches stacked \(2 x 2 rows\)"):
        guider.prepare_inputs(x, sigma, cond, uc)
