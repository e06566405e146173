"""configs/models/*.yaml: model_path / model_config fail at once, naming the key and the layout."""

from __future__ import annotations

import json

import pytest

from unlearn.cli import run
from unlearn.config import ConfigError, load_config, load_configs
from unlearn.engine.sources import check_model_source, required_subfolders

SD = ["unet", "text_encoder", "tokenizer", "vae"]
SDXL = ["unet", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"]
SD3 = [
    "transformer",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "text_encoder_3",
    "tokenizer_3",
    "vae",
]


def _cfg(arch: str, *overrides: str):
    return load_configs([f"configs/models/{arch}.yaml"], overrides)


def _fake_folder(root, subfolders, weights=True):
    for sub in subfolders:
        (root / sub).mkdir(parents=True)
        if sub.startswith("tokenizer"):
            (root / sub / "vocab.json").write_text("{}")
            continue
        (root / sub / "config.json").write_text(json.dumps({}))
        if weights:
            (root / sub / "model.safetensors").write_bytes(b"")
    return root


FLUX = ["transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"]


@pytest.mark.parametrize("arch,layout", [("sd15", SD), ("sd21", SD), ("sdxl", SDXL), ("sd3", SD3), ("flux", FLUX)])
def test_layout_is_read_off_the_config(arch, layout):
    assert sorted(required_subfolders(load_config(f"configs/models/{arch}.yaml"))) == sorted(layout)


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_unset_model_path_names_the_key(arch):
    with pytest.raises(ConfigError, match=r"missing mandatory value\(s\) \['model_path'\].*model_path=\.\.\."):
        _cfg(arch)  # load_configs' own check
    # Configs merged by other means still get the layout.
    with pytest.raises(
        ConfigError,
        match=r"model_path is not set. Pass model_path=<path>: a local diffusers "
        r"folder with unet/, .*vae/.*model_config=",
    ):
        check_model_source(load_config(f"configs/models/{arch}.yaml"))


def test_missing_path_and_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model_path: no such folder or file: .*nope.*text_encoder/"):
        check_model_source(_cfg("sd15", f"model_path={tmp_path / 'nope'}"))
    with pytest.raises(
        FileNotFoundError,
        match=r"model_path='runwayml/stable-diffusion-v1-5' looks like a Hugging "
        r"Face Hub id, but unlearn never downloads. Pass a local copy: .*tokenizer/",
    ):
        check_model_source(_cfg("sd15", "model_path=runwayml/stable-diffusion-v1-5"))


def test_incomplete_folder_lists_every_missing_part(tmp_path):
    root = _fake_folder(tmp_path / "sdxl", ["unet", "text_encoder", "tokenizer", "vae"])
    (root / "vae" / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"lacks text_encoder_2/config.json, tokenizer_2/ \(vocab.json or "
        r"tokenizer.json\), vae/ weights",
    ):
        check_model_source(_cfg("sdxl", f"model_path={root}"))
    _fake_folder(tmp_path / "sd15", SD)
    check_model_source(_cfg("sd15", f"model_path={tmp_path / 'sd15'}"))  # complete: no error


def test_single_file_needs_a_local_config_folder(tmp_path):
    ckpt = tmp_path / "v2-1_768-ema-pruned.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(
        ConfigError, match=r"single checkpoint file, so model_config must name a local diffusers folder"
    ):
        check_model_source(_cfg("sd21", f"model_path={ckpt}"))
    with pytest.raises(FileNotFoundError, match=r"model_config: no such folder: .*Hub id"):
        check_model_source(_cfg("sd21", f"model_path={ckpt}", "model_config=stabilityai/stable-diffusion-2-1"))
    configs = _fake_folder(tmp_path / "configs", ["unet", "vae", "tokenizer"], weights=False)
    with pytest.raises(FileNotFoundError, match=r"model_config=.* lacks text_encoder/config.json"):
        check_model_source(_cfg("sd21", f"model_path={ckpt}", f"model_config={configs}"))
    _fake_folder(tmp_path / "configs2", SD, weights=False)
    check_model_source(_cfg("sd21", f"model_path={ckpt}", f"model_config={tmp_path / 'configs2'}"))
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ConfigError, match="is a file but not a checkpoint"):
        check_model_source(_cfg("sd21", f"model_path={notes}"))


def test_sd3_errors_name_its_layout(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"model_path='stabilityai/stable-diffusion-3-medium-diffusers' looks like a Hugging Face Hub id, but "
        r"unlearn never downloads. Pass a local copy: a local diffusers folder with transformer/, text_encoder/, "
        r"tokenizer/, text_encoder_2/, tokenizer_2/, text_encoder_3/, tokenizer_3/, vae/",
    ):
        check_model_source(_cfg("sd3", "model_path=stabilityai/stable-diffusion-3-medium-diffusers"))
    root = _fake_folder(tmp_path / "sd3", [s for s in SD3 if s != "text_encoder_3"])
    with pytest.raises(FileNotFoundError, match=r"lacks text_encoder_3/config.json. Expected"):
        check_model_source(_cfg("sd3", f"model_path={root}"))
    _fake_folder(tmp_path / "sd3", ["text_encoder_3"])
    check_model_source(_cfg("sd3", f"model_path={root}"))  # complete: no error
    ckpt = tmp_path / "sd3_medium_incl_clips_t5xxlfp16.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(
        ConfigError, match=r"single checkpoint file, but this model config loads from a local diffusers folder only"
    ):
        check_model_source(_cfg("sd3", f"model_path={ckpt}"))


def test_flux_errors_name_its_layout(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"model_path='black-forest-labs/FLUX.1-dev' looks like a Hugging Face Hub id, but unlearn never "
        r"downloads. Pass a local copy: a local diffusers folder with transformer/, text_encoder/, tokenizer/, "
        r"text_encoder_2/, tokenizer_2/, vae/",
    ):
        check_model_source(_cfg("flux", "model_path=black-forest-labs/FLUX.1-dev"))
    ckpt = tmp_path / "flux1-dev.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"loads from a local diffusers folder only: pass model_path=<a local"):
        check_model_source(_cfg("flux", f"model_path={ckpt}"))


def test_configs_without_model_path_are_left_alone():
    check_model_source(load_configs(["configs/toy/smoke.yaml"]))


def test_main_fails_before_building_anything(tmp_path, capsys):
    code = run(["--base", "configs/models/sd15.yaml", "--no-train", "-l", str(tmp_path / "logs")])
    assert code == 2
    assert "model_path=..." in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
