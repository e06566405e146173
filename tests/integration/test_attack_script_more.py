"""scripts/attack.py with the P4D, Ring-A-Bell and concept inversion configs on the tiny smoke model."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = ["--config", "configs/toy/smoke.yaml", "--set", "model.params.sampler_config.params.num_steps=2"]
ORIGINAL = ["--original", "configs/toy/smoke.yaml"]  # a wiring test: any model of the same shapes


@pytest.fixture
def attack():
    return load_script("attack.py")


@pytest.fixture
def inputs(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a striped circle\na striped star\n")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    base = ["--concept", "striped", "--detector", "configs/detectors/toy_judge.yaml", "--images-per-prompt", "2"]
    return [*SMOKE, "--prompts", str(prompts), "--target-images", str(images), *base]


@pytest.mark.parametrize(
    ("config", "overrides", "extra", "name", "adversarial"),
    [
        ("p4d_n", ["steps=2", "num_tokens=3", "check_every=0"], ORIGINAL, "p4d-n",
         ["sks sks sks a striped circle", "sks sks sks a striped star"]),
        ("p4d_k", ["steps=2", "check_every=0"], ORIGINAL, "p4d-k", ["a striped circle sks", "a striped star sks"]),
        ("ring_a_bell", ["num_tokens=3", "population=4", "generations=2"], [], "ring_a_bell", ["sks sks sks"] * 2),
        ("concept_inversion", ["steps=3"], [], "concept_inversion", ["a sks circle", "a sks star"]),
    ],
)  # fmt: skip
def test_each_attack_config_runs_end_to_end(attack, inputs, tmp_path, config, overrides, extra, name, adversarial):
    out = tmp_path / config / "attack.json"
    args = ["--attack", f"configs/attacks/{config}.yaml", "--set-attack", *overrides, *extra, "--out", str(out)]
    attack.main([*inputs, *args])
    saved = json.loads(out.read_text())
    assert saved["attack"] == name and saved["before"]["n"] == saved["after"]["n"] == 4
    assert [p["adversarial"] for p in saved["prompts"]] == adversarial
    assert (out.parent / "adversarial.safetensors").is_file() and (out.parent / "grid.png").is_file()


def test_p4d_without_the_original_model_is_one_line(attack, inputs, tmp_path):
    with pytest.raises(ValueError, match=r"^attack p4d-n: it matches the original model; pass --original$"):
        attack.main([*inputs, "--attack", "configs/attacks/p4d_n.yaml", "--out", str(tmp_path / "attack.json")])
    assert not (tmp_path / "attack.json").exists()


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        ("p4d_k", "mode=m", r"mode: expected one of \['n', 'k'\]"),
        ("ring_a_bell", "crossover_rate=1.5", r"crossover_rate: expected a probability in \[0, 1\]"),
        ("concept_inversion", "num_tokens=0", "num_tokens: expected a positive integer"),
    ],
)
def test_bad_params_name_the_key(attack, inputs, tmp_path, config, override, message):
    args = ["--attack", f"configs/attacks/{config}.yaml", "--set-attack", override, "--out", str(tmp_path / "a.json")]
    with pytest.raises(ValueError, match=message):
        attack.main([*inputs, *args])
