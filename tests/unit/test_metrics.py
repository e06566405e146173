"""UA / IRA / CRA definitions on hand-made label sets, and the Fréchet distance."""

import math

import numpy as np
import pytest
import torch

from unlearn.eval.metrics import frechet_distance, metrics_against, unlearncanvas_metrics


def grid(n_obj=8, n_style=8, reps=1):
    o, s = np.meshgrid(np.arange(n_obj), np.arange(n_style), indexing="ij")
    return np.tile(o.ravel(), reps), np.tile(s.ravel(), reps)


def test_style_erasure_by_hand():
    true_o, true_s = grid()  # 64 images, one per cell
    pred_o, pred_s = true_o.copy(), true_s.copy()
    # Erase "striped" (style 1): 6 of its 8 images lose the style -> UA 75%.
    erased_rows = np.where(true_s == 1)[0]
    pred_s[erased_rows[:6]] = 0
    # Retained styles: the circle image of each is read as "striped" -> each 7/8 right.
    for style in [0, 2, 3, 4, 5, 6, 7]:
        pred_s[np.where(true_s == style)[0][0]] = 1
    # Objects: 4 misses, two of them on erased-style images (they count for CRA too):
    # circle and square, each wrong once in "striped" and once in "gradient".
    pred_o[erased_rows[:2]] = 5
    pred_o[np.where(true_s == 4)[0][:2]] = 7
    m = unlearncanvas_metrics(pred_o, pred_s, true_o, true_s, erased=["striped"])
    assert m["UA"] == pytest.approx(75.0)
    assert m["IRA"] == pytest.approx(100 * 7 / 8)
    # Objects 0 and 1 each lose 2 of 8 images, the others are perfect: mean (6/8*2 + 6) / 8.
    assert m["CRA"] == pytest.approx(100 * (2 * 6 / 8 + 6) / 8)
    assert m["object_acc"] == pytest.approx(100 * 60 / 64)
    assert m["style_acc"] == pytest.approx(100 * (64 - 6 - 7) / 64)
    rows = {r["concept"]: r for r in m["per_concept"]}
    assert rows["striped"]["erased"] and rows["striped"]["accuracy"] == pytest.approx(25.0)
    assert rows["circle"]["n"] == 8 and not rows["circle"]["erased"]


def test_object_erasure_and_multiple_concepts():
    true_o, true_s = grid(reps=2)
    pred_o, pred_s = true_o.copy(), true_s.copy()
    pred_o[true_o == 0] = 3  # circle fully erased
    pred_o[np.where(true_o == 6)[0][:8]] = 3  # moon half erased
    pred_s[np.where(true_s == 2)[0][:4]] = 0  # dotted 12/16
    m = unlearncanvas_metrics(pred_o, pred_s, true_o, true_s, erased=["circle", "moon"])
    assert m["UA"] == pytest.approx((100 + 50) / 2)
    assert m["IRA"] == pytest.approx(100.0)
    assert m["CRA"] == pytest.approx((7 * 100 + 75) / 8)
    assert m["cell_joint_acc"][0][0] == 0.0 and m["cell_joint_acc"][1][1] == 100.0


def test_both_kinds_erased_and_nothing_erased():
    true_o, true_s = grid()
    m = unlearncanvas_metrics(true_o, true_s, true_o, true_s, erased=["circle", "wavy"])
    assert m["UA"] == 0.0 and m["IRA"] == 100.0 and math.isnan(m["CRA"])
    m = unlearncanvas_metrics(true_o, true_s, true_o, true_s, erased=[])
    assert math.isnan(m["UA"]) and m["joint_acc"] == 100.0


@pytest.mark.parametrize("erased", [["striped"], ["circle"], ["circle", "moon"], ["circle", "wavy"]])
def test_metrics_against_recomputes_ua_ira_cra_from_per_concept_rows(erased):
    rng = np.random.default_rng(0)
    true_o, true_s = grid(reps=4)
    pred_o = np.where(rng.random(true_o.shape) < 0.3, rng.integers(0, 8, true_o.shape), true_o)
    pred_s = np.where(rng.random(true_s.shape) < 0.4, rng.integers(0, 8, true_s.shape), true_s)
    base = unlearncanvas_metrics(pred_o, pred_s, true_o, true_s, erased=[])
    direct = unlearncanvas_metrics(pred_o, pred_s, true_o, true_s, erased=erased)
    again = metrics_against(base["per_concept"], erased)
    for key in ("UA", "IRA", "CRA"):
        if math.isnan(direct[key]):
            assert math.isnan(again[key])
        else:
            assert again[key] == pytest.approx(direct[key])
    assert 0.0 < again["UA"] < 100.0  # the random misses make every figure non-trivial
    with pytest.raises(ValueError, match="'hexagon'"):
        metrics_against(base["per_concept"], ["hexagon"])


def test_label_errors():
    o, s = grid()
    with pytest.raises(ValueError, match="unknown concept 'zebra'.*known objects"):
        unlearncanvas_metrics(o, s, o, s, erased=["zebra"])
    with pytest.raises(ValueError, match="same non-zero number"):
        unlearncanvas_metrics(o[:3], s, o, s)
    with pytest.raises(ValueError, match="outside"):
        unlearncanvas_metrics(o + 1, s, o, s)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a + 1.0  # mean shift of 1 in 16 dims: FD = 16
    assert frechet_distance(a, b) == pytest.approx(16.0, rel=1e-6)
    c = rng.standard_normal((200, 16)) * 2.0  # same mean, doubled scale: FD ~ 16 * (2 - 1)^2
    assert 10.0 < frechet_distance(a, c) < 24.0
    few = torch.randn(10, 64)  # N < F: singular covariances stay finite
    assert math.isfinite(frechet_distance(few, few + 0.1))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(a, a[:, :8])


def test_every_percentage_carries_its_sample_size_and_wilson_interval():
    from unlearn.eval.metrics import wilson_interval
    from unlearn.eval.report import before_after_table, metrics_markdown

    objects = np.repeat(np.arange(8), 16)  # 8 objects x 8 styles x 2 images, balanced as the benchmark draws
    styles = np.tile(np.repeat(np.arange(8), 2), 8)
    pred_styles = styles.copy()
    pred_styles[np.flatnonzero(styles == 5)[:4]] = 0  # 4 of the 16 "outlined" images read as another style
    pred_styles[np.flatnonzero(styles == 1)[:8]] = 0  # 8 of the 16 "striped" images missed
    m = unlearncanvas_metrics(objects, pred_styles, objects, styles, erased=["outlined"])
    assert m["intervals"]["UA"] == {"k": 4, "n": 16, "ci95": list(wilson_interval(4, 16))}
    assert m["UA"] == 25.0 and m["intervals"]["IRA"]["k"] == 112 - 8 and m["intervals"]["IRA"]["n"] == 112
    assert m["IRA"] == pytest.approx(100 * 104 / 112)  # the mean of per-style shares = the pooled share
    assert m["intervals"]["CRA"] == {"k": 128, "n": 128, "ci95": list(wilson_interval(128, 128))}
    assert "FD" not in m["intervals"]
    md = metrics_markdown({**m, "FD": 3.0})
    lo, hi = wilson_interval(4, 16)
    assert f"n 16, 95% CI {lo:.1f}–{hi:.1f}" in md
    table = before_after_table(None, {**m, "FD": 3.0})
    assert f"| UA | n/a | 25.00 |  | n 16, 95% CI {lo:.1f}–{hi:.1f} |" in table
    assert "| FD | n/a | 3.00 |  |  |" in table
