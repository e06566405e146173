"""End to end: main.py runs ESD-x on the smoke model; sample.py applies erased.safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.scripts import load_script
from unlearn import cli

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")
ESD_X = str(ROOT / "configs" / "methods" / "esd_x.yaml")
NO_RECIPE = "model.params.loss_fn_config=null"  # the smoke model without its own training loss


@pytest.fixture(scope="module")
def esd_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("logs")
    # overrides right after --base, as the README writes them
    return cli.main(
        ["--base", SMOKE, ESD_X, NO_RECIPE, "concept=striped", "ddim_steps=4", "iterations=3", "--logdir", str(logdir)]
    )


def test_run_writes_only_cross_attention_weights(esd_run: Path):
    from unlearn.engine.export import load_erased_weights

    tensors, meta = load_erased_weights(esd_run / "erased.safetensors")
    assert len(tensors) == 20 and all(".attn2." in name for name in tensors)
    assert meta["train_method"] == "xattn" and meta["concept"] == "striped" and meta["iterations"] == "3"
    ckpt = torch.load(esd_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert sum(k.startswith("teacher.") for k in ckpt["state_dict"]) == 20  # frozen originals resume with the run
    assert list((esd_run / "images" / "train").glob("samples_gs-000003.png"))
    project = next((esd_run / "configs").glob("*-project.yaml")).read_text()
    assert "unlearn.engine.finetune.FineTuneEngine" in project and "unlearn.objectives.esd.ESDObjective" in project


def test_sample_script_applies_erased_weights(esd_run: Path, tmp_path: Path):

    from unlearn.engine.export import load_erased_weights
    from unlearn.engine.loading import load_model

    sample = load_script("sample.py")
    weights = esd_run / "erased.safetensors"
    written = sample.main(
        [
            "--config",
            SMOKE,
            "--weights",
            str(weights),
            "--prompt",
            "a striped circle",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "samples"),
        ]
    )
    assert len(written) == 1 and written[0].is_file()
    model = load_model([SMOKE], weights=weights)
    tensors, _ = load_erased_weights(weights)
    params = dict(model.network.unet.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in tensors.items())


def test_missing_concept_names_the_key(tmp_path: Path, capsys):
    assert cli.run(["--base", SMOKE, ESD_X, NO_RECIPE, "--logdir", str(tmp_path), "--no-train"]) == 2
    assert "missing mandatory value(s) ['concept']" in capsys.readouterr().err
