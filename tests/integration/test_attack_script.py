"""scripts/attack.py end to end on the tiny smoke model, and its bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = ["--config", "configs/toy/smoke.yaml", "--set", "model.params.sampler_config.params.num_steps=2"]


@pytest.fixture
def attack():
    return load_script("attack.py")


@pytest.fixture
def inputs(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a striped circle\n\na striped star\n")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return ["--prompts", str(prompts), "--target-images", str(images)]


def test_unlearndiffatk_writes_asr_prompts_tokens_and_grid(attack, inputs, tmp_path, capsys):
    out = tmp_path / "run" / "attack.json"
    result = attack.main([*SMOKE, *inputs, "--concept", "striped", "--attack", "configs/attacks/unlearndiffatk.yaml",
                          "--set-attack", "steps=3", "check_every=0", "num_tokens=2",
                          "--detector", "configs/detectors/toy_judge.yaml", "--images-per-prompt", "2",
                          "--out", str(out)])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["before"]["n"] == saved["after"]["n"] == 4  # 2 prompts x 2 held-out seeds
    assert saved["seeds"] == [1000, 1001] and saved["attack"] == "unlearndiffatk"
    assert [p["source"] for p in saved["prompts"]] == ["a striped circle", "a striped star"]
    assert all(p["adversarial"].startswith("sks sks ") and p["steps"] == 3 for p in saved["prompts"])
    assert saved["detector"].startswith("toy judge") and result["after"]["ci95"][0] <= result["after"]["asr"]
    assert (out.parent / "adversarial.safetensors").is_file() and (out.parent / "grid.png").is_file()
    assert "ASR" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "configs/attacks/nope.yaml"], "--attack: no such config file: configs/attacks/nope.yaml"),
        (["--attack", "configs/attacks/paraphrases.yaml", "--concept", "zebra"], "concept 'zebra': the toy judge"),
        (["--attack", "configs/attacks/paraphrases.yaml", "--detector", "configs/detectors/nudity.yaml"],
         "concept 'striped': the nudity detector knows"),
        (["--attack", "configs/attacks/unlearndiffatk.yaml", "--set-attack", "num_tokens=0"],
         "num_tokens: expected a positive integer"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line(attack, inputs, tmp_path, args, message):
    argv = [*SMOKE, *inputs, "--concept", "striped", "--detector", "configs/detectors/toy_judge.yaml"]
    argv += [*args, "--out", str(tmp_path / "attack.json")]
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", r"\(").replace(")", r"\)")):
        attack.main(argv)
    assert not (tmp_path / "attack.json").exists()


def test_a_model_without_canvas_needs_prompts_and_a_detector(attack, tmp_path):
    argv = [*SMOKE, "--concept", "striped", "--attack", "configs/attacks/paraphrases.yaml"]
    with pytest.raises(ValueError, match="--detector: the model has no toy canvas metadata"):
        attack.main([*argv, "--out", str(tmp_path / "a.json")])
    with pytest.raises(ValueError, match="--prompts: the model has no toy canvas metadata"):
        attack.main([*argv, "--detector", "configs/detectors/toy_judge.yaml", "--out", str(tmp_path / "a.json")])
    assert not Path(tmp_path / "a.json").exists()
