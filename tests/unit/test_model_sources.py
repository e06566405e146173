"""configs/models/*.yaml: model_path / model_config fail at once, naming the key and the layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

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


def _fake_file(path, keys):
    """A .safetensors file with these tensor names (one number each): only its header is read."""
    save_file({key: torch.zeros(1) for key in keys}, str(path))
    return path


SD2_FILE = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.token_embedding.weight"]
SD3_FILE = ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "first_stage_model.encoder.conv_in.weight"]
SD3_TEXT = [f"text_encoders.{name}.transformer.shared.weight" for name in ("clip_l", "clip_g", "t5xxl")]
FLUX_FILE = ["double_blocks.0.img_attn.norm.key_norm.scale"]  # BFL's flux1-dev: the transformer only


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
    ckpt = _fake_file(tmp_path / "v2-1_768-ema-pruned.safetensors", [*SD2_FILE, SD3_FILE[1]])
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
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(b"")
    with pytest.raises(ValueError, match=r"model_path='.*truncated.safetensors': cannot read it as .safetensors"):
        check_model_source(_cfg("sd21", f"model_path={broken}", f"model_config={tmp_path / 'configs2'}"))


def test_single_file_without_a_text_encoder_needs_its_weights_in_model_config(tmp_path):
    unet_only = _fake_file(tmp_path / "unet.safetensors", [SD2_FILE[0], SD3_FILE[1]])
    configs = _fake_folder(tmp_path / "configs", SD, weights=False)
    with pytest.raises(
        FileNotFoundError,
        match=r"model_config='.*configs' lacks text_encoder/ weights \(\*.safetensors or \*.bin\): "
        r"model_path='.*unet.safetensors' holds no text_encoder, so model_config's folder must give it",
    ):
        check_model_source(_cfg("sd15", f"model_path={unet_only}", f"model_config={configs}"))
    (configs / "text_encoder" / "model.safetensors").write_bytes(b"")
    check_model_source(_cfg("sd15", f"model_path={unet_only}", f"model_config={configs}"))
    ckpt = tmp_path / "v1-5-pruned-emaonly.ckpt"  # never opened: taken to hold every component
    ckpt.write_bytes(b"")
    check_model_source(_cfg("sd15", f"model_path={ckpt}", f"model_config={_fake_folder(tmp_path / 'c2', SD, False)}"))


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


def test_sd3_single_files(tmp_path):
    full = _fake_file(tmp_path / "sd3_medium_incl_clips_t5xxlfp8.safetensors", SD3_FILE + SD3_TEXT)
    with pytest.raises(
        ConfigError, match=r"single checkpoint file, so model_config must name a local diffusers folder"
    ):
        check_model_source(_cfg("sd3", f"model_path={full}"))
    configs = _fake_folder(tmp_path / "configs", [s for s in SD3 if s != "transformer"], weights=False)
    with pytest.raises(FileNotFoundError, match=r"model_config='.*configs' lacks transformer/config.json$"):
        check_model_source(_cfg("sd3", f"model_path={full}", f"model_config={configs}"))
    _fake_folder(configs, ["transformer"], weights=False)
    check_model_source(_cfg("sd3", f"model_path={full}", f"model_config={configs}"))  # every weight in the file
    bare = _fake_file(tmp_path / "sd3_medium.safetensors", SD3_FILE)
    with pytest.raises(
        FileNotFoundError,
        match=r"lacks text_encoder/ weights, text_encoder_2/ weights, text_encoder_3/ weights \(\*.safetensors or "
        r"\*.bin\): model_path='.*sd3_medium.safetensors' holds no text_encoder, text_encoder_2, text_encoder_3",
    ):
        check_model_source(_cfg("sd3", f"model_path={bare}", f"model_config={configs}"))
    ckpt = tmp_path / "sd3_medium.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"read from .safetensors only, as they are released; a pickled checkpoint"):
        check_model_source(_cfg("sd3", f"model_path={ckpt}", f"model_config={configs}"))
    undeclared = _cfg("sd3", f"model_path={full}")
    undeclared.pop("model_config")  # a config that declares no single-file loading
    with pytest.raises(ConfigError, match=r"this model config loads from a local diffusers folder only"):
        check_model_source(undeclared)


def test_flux_errors_name_its_layout(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"model_path='black-forest-labs/FLUX.1-dev' looks like a Hugging Face Hub id, but unlearn never "
        r"downloads. Pass a local copy: a local diffusers folder with transformer/, text_encoder/, tokenizer/, "
        r"text_encoder_2/, tokenizer_2/, vae/",
    ):
        check_model_source(_cfg("flux", "model_path=black-forest-labs/FLUX.1-dev"))
    file = _fake_file(tmp_path / "flux1-dev.safetensors", FLUX_FILE)
    configs = _fake_folder(tmp_path / "configs", FLUX, weights=False)
    with pytest.raises(
        FileNotFoundError,
        match=r"lacks text_encoder/ weights, text_encoder_2/ weights, vae/ weights \(\*.safetensors or \*.bin\)",
    ):
        check_model_source(_cfg("flux", f"model_path={file}", f"model_config={configs}"))
    for sub in ("text_encoder", "text_encoder_2"):
        (configs / sub / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError,
        match=r"model_config='.*configs' lacks vae/ weights \(\*.safetensors or \*.bin\): model_path='.*flux1-dev."
        r"safetensors' holds no vae, so model_config's folder must give it, weights included$",
    ):
        check_model_source(_cfg("flux", f"model_path={file}", f"model_config={configs}"))
    (configs / "vae" / "model.safetensors").write_bytes(b"")
    check_model_source(_cfg("flux", f"model_path={file}", f"model_config={configs}"))  # no error
    for arch in (["flux"], ["flux", "flux_schnell"]):
        ckpt = tmp_path / "flux1-dev.ckpt"
        ckpt.write_bytes(b"")
        cfg = load_configs(
            [f"configs/models/{a}.yaml" for a in arch], [f"model_path={ckpt}", f"model_config={configs}"]
        )
        with pytest.raises(ConfigError, match=r"read from .safetensors only"):
            check_model_source(cfg)


def test_configs_without_model_path_are_left_alone():
    check_model_source(load_configs(["configs/toy/smoke.yaml"]))


def test_main_fails_before_building_anything(tmp_path, capsys):
    code = run(["--base", "configs/models/sd15.yaml", "--no-train", "-l", str(tmp_path / "logs")])
    assert code == 2
    assert "model_path=..." in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
