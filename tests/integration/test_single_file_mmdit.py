"""configs/models/sd3.yaml and flux.yaml with model_path=<one original .safetensors> model_config=<folder>.

SD3: the tiny pipeline's transformer in SAI's layout (`mmdit_layout.sd3_to_original`) and its VAE
in the LDM layout, with or without CLIP-L/G and T5 under ``text_encoders.*`` (SAI's
``sd3_medium_incl_clips_t5xxl*`` files); built from the file, the engine must equal the one built
from the folder. Flux: its files hold the transformer only, so the VAE and text encoders come from
model_config's folder. diffusers' Flux converter fixes the width at Flux.1's 3072 channels, so BFL's
layout itself is checked on a full-width transformer with one block of each kind (slow).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.integration.fp8_layout import scaled_fp8
from tests.integration.ldm_layout import vae_to_ldm
from tests.integration.mmdit_layout import flux_to_original, sd3_to_original
from tests.integration.tiny_pipelines import IMAGE_SIZE
from unlearn.engine.loading import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

SD3, FLUX = "configs/models/sd3.yaml", "configs/models/flux.yaml"
SD3_TEXT = (
    "text_encoders.clip_l.transformer.",
    "text_encoders.clip_g.transformer.",
    "text_encoders.t5xxl.transformer.",
)
TOL = 1e-6


def _load(config: str, model_path, model_config=None):
    overrides = [f"model_path={model_path}", f"model.params.image_size={IMAGE_SIZE}"]
    return load_model([config], overrides=overrides + ([f"model_config={model_config}"] if model_config else []))


def _without_weights(folder, dest):
    """``folder`` with its configs and tokenizers only."""
    return shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))


def _save(state: dict[str, torch.Tensor], path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _network_output(model) -> torch.Tensor:
    """The network on fixed random latents, timesteps and text conditioning (not the conditioner's)."""
    g = torch.Generator().manual_seed(0)
    config = model.network.transformer.config
    x = torch.randn(2, model.network.in_channels, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=g)
    cond = {
        "crossattn": torch.randn(2, 7, config.joint_attention_dim, generator=g),
        "vector": torch.randn(2, config.pooled_projection_dim, generator=g),
    }
    with torch.no_grad():
        return model.network(x, torch.tensor([250.0, 800.0]), cond)


def _differing(a, b, skip=()) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if k not in skip and not torch.equal(sa[k], sb[k])]


@pytest.fixture(scope="module")
def sd3(tiny_sd3_pipeline):
    return _load(SD3, tiny_sd3_pipeline)


@pytest.fixture(scope="module")
def sd3_files(sd3, tmp_path_factory):
    """The tiny SD3 as SAI's single files: {"all": with CLIP-L/G and T5, "no_text": transformer and VAE}."""
    root = tmp_path_factory.mktemp("sd3_single_file")
    base = {**sd3_to_original(sd3.network.transformer), **vae_to_ldm(sd3.first_stage.vae)}
    text = {}
    for prefix, embedder in zip(SD3_TEXT, sd3.conditioner.embedders):
        for key, value in embedder.transformer.state_dict().items():
            # Files store T5's embedding once (``shared``) and, like ComfyUI's, no CLIP-L projection.
            if key not in ("encoder.embed_tokens.weight", "text_model.embeddings.position_ids") and not (
                prefix == SD3_TEXT[0] and key == "text_projection.weight"
            ):
                text[prefix + key] = value
    return {
        "all": _save({**base, **text}, root / "sd3_medium_incl_clips_t5xxlfp16.safetensors"),
        "no_text": _save(base, root / "sd3_medium.safetensors"),
    }


def test_sd3_file_with_text_encoders_loads_the_folder_model(sd3, sd3_files, tiny_sd3_pipeline, tmp_path):
    configs = _without_weights(tiny_sd3_pipeline, tmp_path / "configs")  # every weight comes from the file
    single = _load(SD3, sd3_files["all"], configs)
    torch.testing.assert_close(_network_output(single), _network_output(sd3), atol=TOL, rtol=0)
    projection = "conditioner.embedders.0.transformer.text_projection.weight"
    assert _differing(single, sd3, skip=[projection]) == []
    # SD3 reads CLIP-L's pooled output unprojected: diffusers' from_single_file loads an identity there.
    assert torch.equal(single.state_dict()[projection], torch.eye(16))


def test_sd3_file_without_text_encoders_takes_them_from_model_config(sd3, sd3_files, tiny_sd3_pipeline, tmp_path):
    single = _load(SD3, sd3_files["no_text"], tiny_sd3_pipeline)
    torch.testing.assert_close(_network_output(single), _network_output(sd3), atol=TOL, rtol=0)
    assert _differing(single, sd3) == []
    configs = _without_weights(tiny_sd3_pipeline, tmp_path / "configs")
    with pytest.raises(
        FileNotFoundError,
        match=r"model_config='.*configs' lacks text_encoder/ weights, text_encoder_2/ weights, text_encoder_3/ "
        r"weights \(\*.safetensors or \*.bin\): model_path='.*sd3_medium.safetensors' holds no text_encoder, "
        r"text_encoder_2, text_encoder_3, so model_config's folder must give them, weights included",
    ):
        _load(SD3, sd3_files["no_text"], configs)


def test_sd3_fp8_t5_loads_in_float32(sd3, tiny_sd3_pipeline, tmp_path):
    """sd3_medium_incl_clips_t5xxlfp8: T5 stored in float8_e4m3fn loads as those values in float32."""
    from unlearn.conditioning import T5TextEmbedder

    t5 = sd3.conditioner.embedders[2].transformer.state_dict()
    state = {SD3_TEXT[2] + k: v.to(torch.float8_e4m3fn) for k, v in t5.items() if k != "encoder.embed_tokens.weight"}
    file = _save(state, tmp_path / "t5xxl_fp8_e4m3fn.safetensors")
    embedder = T5TextEmbedder(
        pretrained_path=str(file), subfolder="text_encoder_3", single_file_config=str(tiny_sd3_pipeline)
    )
    got = embedder.transformer.state_dict()
    assert got.keys() == t5.keys()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], t5[k].to(torch.float8_e4m3fn).float()) for k in t5)


def test_sd3_fp8_scaled_file_loads_its_weights_times_their_scales(sd3, sd3_files, tiny_sd3_pipeline, tmp_path):
    """A ComfyUI-style scaled float8 file: the transformer with ``scale_weight`` (one scale a tensor),
    the text encoders with ``weight_scale`` (one a row). Each weight loads as q * s; read unscaled,
    as diffusers would, it is off by 1 / s."""
    from safetensors.torch import load_file

    state = load_file(str(sd3_files["all"]))
    network, network_expected = scaled_fp8({k: v for k, v in state.items() if not k.startswith(SD3_TEXT)})
    text, text_expected = scaled_fp8(
        {k: v for k, v in state.items() if k.startswith(SD3_TEXT)}, "weight_scale", per_row=True
    )
    scaled = _save({**network, **text}, tmp_path / "sd3_medium_incl_clips_t5xxl_fp8_scaled.safetensors")
    expected = _save({**network_expected, **text_expected}, tmp_path / "dequantized.safetensors")
    configs = _without_weights(tiny_sd3_pipeline, tmp_path / "configs")
    got, want = _load(SD3, scaled, configs), _load(SD3, expected, configs)
    assert _differing(got, want) == []
    key = "network.transformer.transformer_blocks.0.attn.to_q.weight"
    scale = network["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.scale_weight"]
    assert not torch.equal(got.state_dict()[key], sd3.state_dict()[key])  # float8 rounding
    torch.testing.assert_close(got.state_dict()[key], sd3.state_dict()[key], atol=float(scale) * 32, rtol=0)


def test_sd3_plain_fp8_file_loads_its_values_in_float32(sd3_files, tiny_sd3_pipeline, tmp_path):
    """flux1-dev-fp8-style: float8 weights without scales load as those values, in float32."""
    from safetensors.torch import load_file

    state = load_file(str(sd3_files["no_text"]))
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
    got = _load(SD3, _save(fp8, tmp_path / "sd3_fp8.safetensors"), tiny_sd3_pipeline)
    expected = {k: v.float() for k, v in fp8.items()}
    want = _load(SD3, _save(expected, tmp_path / "expected.safetensors"), tiny_sd3_pipeline)
    assert _differing(got, want) == []
    assert {p.dtype for p in got.network.parameters()} == {torch.float32}


def test_sd3_single_file_errors_name_the_file(sd3, sd3_files, tiny_sd3_pipeline, tmp_path):
    from unlearn.networks import DiffusersSD3Transformer

    vae_only = _save(vae_to_ldm(sd3.first_stage.vae), tmp_path / "vae.safetensors")
    with pytest.raises(ValueError, match=r"pretrained_path='.*vae.safetensors' holds no SD3Transformer2DModel"):
        DiffusersSD3Transformer(pretrained_path=str(vae_only), single_file_config=str(tiny_sd3_pipeline))
    with pytest.raises(ValueError, match=r"is a single checkpoint file: set single_file_config"):
        DiffusersSD3Transformer(pretrained_path=str(sd3_files["no_text"]))
    ckpt = tmp_path / "sd3_medium.ckpt"
    ckpt.write_bytes(b"never opened")
    with pytest.raises(ValueError, match=r"read from .safetensors only .* a pickled checkpoint is never opened"):
        DiffusersSD3Transformer(pretrained_path=str(ckpt), single_file_config=str(tiny_sd3_pipeline))


@pytest.fixture(scope="module")
def flux(tiny_flux_pipeline):
    return _load(FLUX, tiny_flux_pipeline)


def test_flux_transformer_file_takes_vae_and_text_encoders_from_model_config(flux, tiny_flux_pipeline, tmp_path):
    """A transformer-only file, here in diffusers' own layout (a transformer folder's weights file,
    which from_single_file reads as it is): everything else comes from model_config's folder."""
    file = shutil.copy(
        tiny_flux_pipeline / "transformer" / "diffusion_pytorch_model.safetensors", tmp_path / "t.safetensors"
    )
    single = _load(FLUX, file, tiny_flux_pipeline)
    torch.testing.assert_close(_network_output(single), _network_output(flux), atol=TOL, rtol=0)
    assert _differing(single, flux) == []
    configs = shutil.copytree(tiny_flux_pipeline, tmp_path / "configs")
    (configs / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"model_config='.*configs' lacks vae/ weights \(\*.safetensors or \*.bin\): model_path='.*t.safetensors' "
        r"holds no vae, so model_config's folder must give it, weights included",
    ):
        _load(FLUX, file, configs)


def _full_width_flux(folder):
    """Flux.1's width (24 heads of 128 channels) with one double and one single block, in bfloat16
    (about 0.5 B parameters): diffusers' converter splits the single blocks at 3072 channels."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device("meta"):
        model = FluxTransformer2DModel(
            in_channels=64, num_layers=1, num_single_layers=1, joint_attention_dim=32, pooled_projection_dim=16
        )
    model.to_empty(device="cpu").to(torch.bfloat16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(folder / "transformer")
    return model


@pytest.mark.slow  # builds, writes and loads a 0.5 B-parameter transformer twice
def test_flux_bfl_file_loads_the_folder_transformer(tmp_path):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from unlearn.networks import DiffusersFluxTransformer

    model = _full_width_flux(tmp_path / "flux")
    original = flux_to_original(model)
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(original))  # the helper inverts diffusers'
    state = model.state_dict()
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    file = _save(original, tmp_path / "flux1-dev.safetensors")
    del model, original, back, state
    from_folder = DiffusersFluxTransformer(pretrained_path=str(tmp_path / "flux"))
    from_file = DiffusersFluxTransformer(pretrained_path=str(file), single_file_config=str(tmp_path / "flux"))
    assert _differing(from_file.transformer, from_folder.transformer) == []
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 4, 4, generator=g), torch.tensor([500.0])
    cond = {"crossattn": torch.randn(1, 3, 32, generator=g), "vector": torch.randn(1, 16, generator=g)}
    with torch.no_grad():
        torch.testing.assert_close(from_file(x, t, cond), from_folder(x, t, cond), atol=TOL, rtol=0)
