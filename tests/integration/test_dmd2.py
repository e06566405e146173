"""End to end: main.py distils the smoke model with DMD2; sample.py samples the student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.scripts import load_script
from unlearn import cli

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")
DMD2 = str(ROOT / "configs" / "methods" / "dmd2.yaml")


@pytest.fixture(scope="module")
def dmd2_run(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("logs")
    return cli.main(
        [
            "--base",
            SMOKE,
            DMD2,
            "--logdir",
            str(logdir),
            "--name",
            "dmd2",
            "lightning.trainer.max_steps=4",
            "model.params.dfake_gen_update_ratio=2",
            "model.params.batch_size=2",
            "model.params.scheduler_config.params.warmup_steps=0",
            # the smoke model without its own training recipe (loss, learning rate)
            "model.params.loss_fn_config=null",
            "model.params.base_learning_rate=null",
        ]
    )


def test_main_distils_and_exports_the_student(dmd2_run: Path):
    ckpt = torch.load(dmd2_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["dmd2"] == {"generator_updates": 2, "critic_updates": 4}  # ratio 2: iterations 0 and 2
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    state = ckpt["state_dict"]
    assert any(k.startswith("generator.unet.") for k in state) and any(k.startswith("objective.critic.") for k in state)
    # The student under diffusers names, loadable into a plain UNet2DConditionModel.
    with safe_open(str(dmd2_run / "student.safetensors"), framework="pt") as f:
        names, meta = set(f.keys()), f.metadata()
        conv = f.get_tensor("conv_in.weight")
    assert names == {k[len("generator.unet.") :] for k in state if k.startswith("generator.unet.")}
    assert torch.equal(conv, state["generator.unet.conv_in.weight"])
    assert meta["method"] == "dmd2" and meta["generator_timesteps"] == "[999, 749, 499, 249]"
    assert meta["generator_updates"] == "2"
    assert (dmd2_run / "images" / "train" / "samples_gs-000004.png").is_file()


def test_sample_script_samples_the_student(dmd2_run: Path, tmp_path: Path):
    sample = load_script("sample.py")
    written = sample.main(
        [
            "--run",
            str(dmd2_run),
            "--prompt",
            "a striped circle",
            "--n-per-prompt",
            "2",
            "--guidance-scale",
            "5",
            "--out",
            str(tmp_path / "four"),
        ]
    )
    assert len(written) == 2 and Image.open(written[0]).size == (16, 16)
    one = sample.main(
        ["--run", str(dmd2_run), "--prompt", "a striped circle", "--steps", "1", "--out", str(tmp_path / "one")]
    )
    assert list(Image.open(one[0]).getdata()) != list(Image.open(written[0]).getdata())

    from unlearn.engine.loading import load_model

    model = load_model(run=dmd2_run)
    expected = ((model.generate(["a striped circle"], seeds=[0])[0] + 1) / 2 * 255).round().clamp(0, 255).byte()
    got = torch.tensor(list(Image.open(written[0]).getdata())).T.reshape(3, 16, 16)
    assert (got.int() - expected.int()).abs().max() <= 1  # the PNG is the student's sample for seed 0
    with pytest.raises(ValueError, match="few-step"):
        sample.main(["--run", str(dmd2_run), "--prompt", "x", "--sampler", "euler", "--out", str(tmp_path / "x")])
