"""scripts/evaluate.py --prompts: an I2P-style CSV on the smoke model, with a scripted nudity detector."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scripts import load_script
from unlearn.data.prompts import read_prompt_csv
from unlearn.eval.prompt_benchmark import generate_prompt_images, select_rows

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    ("a striped circle", "sexual,violence", "7", "2.0"),
    ("a dotted square", "violence", "", ""),  # no seed / guidance: --seed + k, the CLI's or config's scale
    ("a red star", "shocking", "3", "5"),
]


@pytest.fixture
def prompts_csv(tmp_path) -> Path:
    path = tmp_path / "i2p.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "categories", "hard", "evaluation_seed", "evaluation_guidance"])
        writer.writerows([(p, c, "1", s, g) for p, c, s, g in ROWS])
    return path


class FakeDetector:
    """NudeNet's ``detect``: one exposed box on the images whose file name starts with 00000."""

    def __init__(self):
        self.seen = []

    def detect(self, image):
        self.seen.append(Path(image).name)
        hit = Path(image).name.startswith("00000")
        return [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 2, 2]}] if hit else []


@pytest.fixture
def evaluate():
    module = load_script("evaluate.py")
    return module


def test_script_generates_echoes_and_scores_the_filtered_rows(evaluate, prompts_csv, tmp_path, monkeypatch):
    from unlearn.eval import nudity

    detector = FakeDetector()
    monkeypatch.setattr(nudity, "default_detector", lambda: detector)
    out = tmp_path / "eval" / "metrics.json"
    metrics = evaluate.main(
        [
            "--config",
            SMOKE,
            "--prompts",
            str(prompts_csv),
            "--categories",
            "Sexual,shocking",
            "--images-per-prompt",
            "2",
            "--steps",
            "2",
            "--nudity",
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["num_prompts"] == 2 and saved["num_images"] == 4 and saved["categories"] == ["Sexual", "shocking"]
    with (out.parent / "prompts.csv").open(newline="") as f:
        echo = list(csv.DictReader(f))
    assert [(r["image"], r["prompt"], r["evaluation_seed"], r["evaluation_guidance"]) for r in echo] == [
        ("00000_0.png", "a striped circle", "7", "2.0"),
        ("00000_1.png", "a striped circle", "8", "2.0"),
        ("00001_0.png", "a red star", "3", "5.0"),
        ("00001_1.png", "a red star", "4", "5.0"),
    ]
    assert echo[0]["categories"] == "sexual,violence"
    for r in echo:
        assert Image.open(out.parent / "images" / r["image"]).size == (16, 16)
    result = saved["nudity"]
    assert sorted(detector.seen) == [r["image"] for r in echo]
    assert result["classes"] == list(nudity.EXPOSED_CLASSES) and result["threshold"] == 0.6
    assert result["num_nude"] == 2 and result["nudity_rate"] == 0.5
    assert [i["nude"] for i in result["images"]] == [True, True, False, False]


def test_images_follow_the_row_seed_and_guidance(prompts_csv, tmp_path):
    from unlearn.engine.loading import load_model

    model = load_model([SMOKE])
    rows = read_prompt_csv(prompts_csv)
    records = generate_prompt_images(model, rows, tmp_path, seed=100, num_steps=2, batch_size=2)
    assert [(r["evaluation_seed"], r["evaluation_guidance"]) for r in records] == [(7, 2.0), (100, 3.0), (3, 5.0)]
    for rec in records:
        expected = model.generate(
            [rec["prompt"]],
            seeds=[rec["evaluation_seed"]],
            sampler=model.make_sampler(None, 2, rec["evaluation_guidance"]),
        )[0]
        expected = ((expected.clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0).numpy()
        got = np.asarray(Image.open(rec["path"]).convert("RGB"), dtype=np.float32)
        assert np.abs(got - expected).max() <= 1.0  # 8-bit rounding of the same image
    other = generate_prompt_images(model, rows[1:2], tmp_path / "g", seed=100, num_steps=2, guidance_scale=9.0)
    assert other[0]["evaluation_guidance"] == 9.0
    assert not np.array_equal(np.asarray(Image.open(other[0]["path"])), np.asarray(Image.open(records[1]["path"])))


def test_unknown_category_lists_the_csv_categories(prompts_csv):
    rows = read_prompt_csv(prompts_csv)
    assert [r.prompt for r in select_rows(rows, ["VIOLENCE"])] == ["a striped circle", "a dotted square"]
    categories = r"\['sexual', 'shocking', 'violence'\]"
    with pytest.raises(ValueError, match=rf"no prompt has them; the CSV's categories: {categories}"):
        select_rows(rows, ["hate"])


def test_missing_prompt_file_fails_before_loading(evaluate, tmp_path):
    with pytest.raises(FileNotFoundError, match="--prompts: no such file"):
        evaluate.main(["--config", SMOKE, "--prompts", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m.json")])
