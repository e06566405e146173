"""End to end: main.py trains minimalist masks on the smoke model; sample.py applies them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.scripts import load_script
from unlearn import cli
from unlearn.hooks import load_masks

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")
METHOD = str(ROOT / "configs" / "methods" / "minimalist.yaml")
# The smoke model without its own training recipe (loss, learning rate), and a 2-step trajectory.
SMOKE_MODEL = ["model.params.loss_fn_config=null", "model.params.base_learning_rate=null"]
TWO_STEPS = "model.params.trajectory_sampler_config.params.num_steps=2"
BENCHMARK = "lightning.callbacks.toy_benchmark.params"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("logs")
    return cli.main(
        [
            "--base",
            SMOKE,
            METHOD,
            "--logdir",
            str(logdir),
            *SMOKE_MODEL,
            "concept=striped",
            "lightning.trainer.max_steps=2",
            TWO_STEPS,
        ]
    )


def test_main_trains_masks_and_writes_them(mask_run: Path):
    values, meta = load_masks(mask_run / "masks.safetensors")
    total = sum(v.numel() for v in values.values())
    assert meta["concept"] == "striped" and meta["strategy"] == "sigmoid" and meta["model_class"] == "DiffusersUNet"
    assert int(meta["global_step"]) == 2
    assert float(meta["off_share"]) == pytest.approx(round(0.05 * total) / total)
    assert len(json.loads(meta["modules"])["linear"]) == 50  # every Linear of the smoke UNet
    ckpt = torch.load(mask_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and any(k.startswith("masks.") for k in ckpt["state_dict"])
    assert (mask_run / "images" / "train" / "masked_gs-000002.png").is_file()
    assert "MaskErasureEngine" in next((mask_run / "configs").glob("*-project.yaml")).read_text()


def test_sample_script_applies_the_masks(mask_run: Path, tmp_path: Path):
    sample = load_script("sample.py")
    args = ["--config", SMOKE, "--prompt", "a striped circle", "--steps", "3"]
    torch.manual_seed(0)  # the smoke config has no weights: the same seed gives the same random model
    plain = sample.main([*args, "--out", str(tmp_path / "plain")])
    torch.manual_seed(0)
    masked = sample.main([*args, "--masks", str(mask_run / "masks.safetensors"), "--out", str(tmp_path / "masked")])
    assert Image.open(masked[0]).size == (16, 16)
    assert list(Image.open(masked[0]).getdata()) != list(Image.open(plain[0]).getdata())
    with pytest.raises(FileNotFoundError, match="no such file"):
        sample.main([*args, "--masks", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x")])


def test_toy_model_runs_the_benchmark_with_the_saved_masks(tmp_path: Path):
    canvas = (
        "model.params.metadata={objects: [circle, square, triangle, star, cross, heart, moon, arrow], "
        "styles: [solid, striped, dotted, checkered, gradient, outlined, noisy, wavy]}"
    )
    run = cli.main(
        [
            "--base",
            SMOKE,
            METHOD,
            "--logdir",
            str(tmp_path),
            *SMOKE_MODEL,
            "concept=striped",
            "lightning.trainer.max_steps=1",
            TWO_STEPS,
            "lightning.callbacks.image_logger=null",
            "model.params.image_size=32",
            canvas,  # the judge sees 32 px images
            f"{BENCHMARK}.images_per_prompt=1",
            f"{BENCHMARK}.num_steps=2",
            f"{BENCHMARK}.before=true",
        ]
    )
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["erased"] == ["striped"] and metrics["n_images"] == 64
    assert {"UA", "IRA", "CRA", "FD"} <= set(metrics)
    assert metrics["masks_off_share"] == pytest.approx(float(load_masks(run / "masks.safetensors")[1]["off_share"]))
    assert (run / "eval" / "before" / "metrics.json").is_file() and (run / "eval" / "grid.png").is_file()
    # the model without masks (the old base_FD) beside the masked one
    before = json.loads((run / "eval" / "before" / "metrics.json").read_text())
    assert before["erased"] == ["striped"] and before["n_images"] == 64 and "masks_off_share" not in before
    table = (run / "eval" / "before_after.md").read_text()
    assert f"| FD | {before['FD']:.2f} | {metrics['FD']:.2f} |" in table
