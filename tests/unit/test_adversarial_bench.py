"""scripts/bench/adversarial_erasure.py pools the seeds' ASR and checks the issue's bar on the figures it is given."""

from __future__ import annotations

import pytest

from tests.scripts import load_script

SETTINGS = {"lr": "1e-3", "iterations": 1000, "reuse": 50, "seeds": [23, 24], "images": 4, "attack_images": 4,
            "attacks": ["concept_inversion"], "machine": "test", "variants": {"esd_x": [], "adv_ci": []}}  # fmt: skip


def _bench():
    return load_script("bench/adversarial_erasure.py")


def _rate(k: int, n: int) -> dict:
    return {"asr": 100.0 * k / n, "k": k, "n": n, "ci95": [0.0, 100.0]}


def _row(variant: str, seed: int, after_k: int, ua: float = 100.0, ira: float = 85.0, cra: float = 99.0) -> dict:
    attack = {"before": _rate(0, 32), "after": _rate(after_k, 32), "attack_seconds": 60.0, "attack_steps": 960}
    train_s = 100.0 if variant == "esd_x" else 200.0
    return {"concept": "outlined", "seed": seed, "variant": variant, "run_dir": "x", "train_s": train_s,
            "UA": ua, "IRA": ira, "CRA": cra, "FD": 12.0, "attacks": {"concept_inversion": attack}}  # fmt: skip


def test_seeds_pool_into_one_rate_and_the_half_bar_is_checked():
    bench = _bench()
    rows = [_row("esd_x", 23, 8), _row("esd_x", 24, 12), _row("adv_ci", 23, 2), _row("adv_ci", 24, 6)]
    summary = bench.summarize(rows, ["concept_inversion"])
    plain = summary["outlined"]["variants"]["esd_x"]["asr"]["concept_inversion"]["after"]
    assert (plain["k"], plain["n"]) == (20, 64)
    assert plain["asr"] == pytest.approx(31.25)
    lo, hi = plain["ci95"]
    assert 20.0 < lo < 31.25 < hi < 45.0  # Wilson at 20/64
    check = summary["outlined"]["checks"]["adv_ci"]
    assert check["concept_inversion"]["adversarial"] == pytest.approx(12.5)
    assert check["concept_inversion"]["at_most_half"] and check["floors"]
    assert check["train_cost"] == pytest.approx(2.0)
    text = bench.markdown({"settings": SETTINGS, "runs": rows, "summary": summary})
    assert "31.2 (20/64;" in text and "12.5 (8/64;" in text
    assert "`adv_ci`: concept inversion searches, 50 steps every 100 on 2 prompts" in text
    assert check["concept_inversion"]["p_lower"] == pytest.approx(0.0088, abs=1e-4)  # 8/64 below 20/64
    assert "outlined, adv_ci: floors met; training ×2.00; concept_inversion: 12.5 vs 31.2 (p = 0.01), met" in text


def test_at_most_half_on_too_few_images_is_not_called_met():
    bench = _bench()
    assert bench.fisher_lower(0, 64, 2, 64) == pytest.approx(0.2480, abs=1e-4)  # scipy.stats.fisher_exact, less
    rows = [_row("esd_x", 23, 2), _row("adv_ci", 23, 0)]
    summary = bench.summarize(rows, ["concept_inversion"])
    check = summary["outlined"]["checks"]["adv_ci"]["concept_inversion"]
    assert check["at_most_half"] and not check["met"]
    text = bench.markdown({"settings": SETTINGS, "runs": rows, "summary": summary})
    assert "not met (at most half, but one-sided Fisher p = 0.25)" in text


def test_a_plain_asr_of_zero_is_not_called_halved_and_floors_are_checked():
    bench = _bench()
    rows = [_row("esd_x", 23, 0), _row("adv_uda", 23, 0, ira=75.0)]
    summary = bench.summarize(rows, ["concept_inversion"])
    check = summary["outlined"]["checks"]["adv_uda"]
    assert check["floors"] is False  # IRA 75 < 80
    assert check["concept_inversion"]["meaningful"] is False
    text = bench.markdown({"settings": SETTINGS, "runs": rows, "summary": summary})
    assert "floors not met" in text and "nothing to halve" in text


def test_attack_specs_name_their_overrides():
    bench = _bench()
    name, config, overrides = bench.attack_spec("configs/attacks/concept_inversion.yaml:num_tokens=4,steps=1000")
    assert (name, str(config), overrides) == (
        "concept_inversion_num_tokens4_steps1000",
        "configs/attacks/concept_inversion.yaml",
        ["num_tokens=4", "steps=1000"],
    )
    assert bench.attack_spec("configs/attacks/unlearndiffatk.yaml")[::2] == ("unlearndiffatk", [])
    with pytest.raises(ValueError, match="key=value"):
        bench.attack_spec("configs/attacks/unlearndiffatk.yaml:steps")


def test_the_newest_finished_run_is_used(tmp_path):
    bench = _bench()
    stamps = {"2026-01-01T00-00-00": True, "2026-01-02T00-00-00": True, "2026-01-03T00-00-00": False}
    for stamp, finished in stamps.items():
        run = tmp_path / f"{stamp}_esd_x_outlined_seed23"
        run.mkdir()
        if finished:
            (run / "erased.safetensors").write_bytes(b"")
    assert bench.run_dir(tmp_path, "esd_x_outlined_seed23").name.startswith("2026-01-02")
    assert bench.run_dir(tmp_path, "esd_x_circle_seed23") is None
    # a newer run of a variant whose name ends with another's is not the other's
    (tmp_path / "2026-01-04T00-00-00_adv_te_outlined_seed23").mkdir()
    (tmp_path / "2026-01-04T00-00-00_adv_te_outlined_seed23" / "erased.safetensors").write_bytes(b"")
    (tmp_path / "2026-01-01T00-00-00_te_outlined_seed23").mkdir()
    (tmp_path / "2026-01-01T00-00-00_te_outlined_seed23" / "erased.safetensors").write_bytes(b"")
    assert bench.run_dir(tmp_path, "te_outlined_seed23").name == "2026-01-01T00-00-00_te_outlined_seed23"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attacks", "nope.yaml"], "--attacks: no such file: nope.yaml"),
        (["--variants", "adv_ci"], "--variants: esd_x and any of"),
        (["--variants", "esd_x", "adv_nope"], "--variants: esd_x and any of"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, argv, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        _bench().main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_text_encoder_variants_train_at_their_own_learning_rate(tmp_path):
    bench = _bench()
    args = bench.build_parser().parse_args(["--lr", "5e-4"])
    plain = bench.train_command(args, "circle", 23, "esd_x", tmp_path)
    advunlearn = bench.train_command(args, "circle", 23, "adv_te", tmp_path)
    assert [a for a in plain if a.startswith("lr=")] == ["lr=5e-4"]
    assert "configs/methods/esd_text_encoder.yaml" not in plain
    # adversary first, then the text encoder's config (it sets the selector the adversary's prompts train)
    configs = [a for a in advunlearn if a.startswith("configs/methods/")]
    assert configs == ["configs/methods/esd_x.yaml", "configs/methods/adversarial.yaml", bench.TEXT_ENCODER]
    lrs = [a for a in advunlearn if a.startswith("lr=")]
    assert lrs == ["lr=5e-4", f"lr={bench.TEXT_ENCODER_LR}"]  # the later override wins in main.py
    assert advunlearn[advunlearn.index("--name") + 1] == "adv_te_circle_seed23"
