"""The engine built from configs/models/{sd15,sd21,sdxl,sd3,flux}.yaml reproduces diffusers' pipelines.

Each tiny pipeline folder is loaded twice, by ``load_model`` with ``model_path=<folder>`` and
by ``StableDiffusion(XL)Pipeline.from_pretrained``; both sample from the same seeded latents
with the same scheduler, steps, guidance and prompts. Matching latents and images prove the
conditioning (text layers, pooled embedding, time_ids, zeroed SDXL negatives), the
parameterization (eps / v) and the timesteps are wired as diffusers wires them.

Schedulers: DDIMScheduler(set_alpha_to_one=True, clip_sample=False) <-> our DDIM and
EulerDiscreteScheduler <-> our Euler, both with the real configs' timestep_spacing="leading",
steps_offset=1 (see tests/unit/test_diffusion_samplers.py for why these match). SD3 keeps its
pipeline's FlowMatchEulerDiscreteScheduler (shift 3) <-> our Euler on FlowMatchDiscretization;
Flux its dynamically shifted one, with the guidance embedding and packed latents.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusion3Pipeline

from tests.integration.tiny_pipelines import IMAGE_SIZE, load_diffusers
from unlearn.engine import generation
from unlearn.engine.loading import load_model

STEPS = 5
GUIDANCE = 7.5
PROMPT = "a photo of a cat on a sofa"
SCHEDULERS = {
    "ddim": (DDIMScheduler, dict(set_alpha_to_one=True, clip_sample=False)),
    "euler": (EulerDiscreteScheduler, {}),
}
TOL = 1e-4  # max difference: [0, 1] images (measured: 2e-6 at most) and latents relative to their max


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engines(tiny_engines):
    return tiny_engines


@pytest.fixture(scope="module")
def pipelines(tiny_pipelines):
    return {arch: load_diffusers(arch, folder) for arch, folder in tiny_pipelines.items()}


@pytest.fixture(scope="module")
def sd3(tiny_sd3_pipeline):
    """(engine, pipeline) of the tiny SD3 folder."""
    model = load_model(
        ["configs/models/sd3.yaml"],
        overrides=[f"model_path={tiny_sd3_pipeline}", f"model.params.image_size={IMAGE_SIZE}"],
    )
    return model, load_diffusers("sd3", tiny_sd3_pipeline)


@pytest.fixture(scope="module")
def flux(tiny_flux_pipeline):
    """(engine, pipeline) of the tiny Flux folder; 8 x 8 latents pack into 16 tokens, the image_seq_len
    the engine gives the dynamic shift as FluxPipeline does."""
    model = load_model(
        ["configs/models/flux.yaml"],
        overrides=[f"model_path={tiny_flux_pipeline}", f"model.params.image_size={IMAGE_SIZE}"],
    )
    assert model.image_seq_len == (IMAGE_SIZE // 2 // 2) ** 2
    return model, load_diffusers("flux", tiny_flux_pipeline)


def _engine_and_pipeline(request, arch):
    if arch == "sd3":  # built only when asked for: UNet-only runs build no SD3, and SD3-only runs no UNet
        return request.getfixturevalue("sd3")
    return request.getfixturevalue("engines")[arch], request.getfixturevalue("pipelines")[arch]


def _diffusers(pipe, sampler, negative, noise, output_type):
    if not isinstance(pipe, StableDiffusion3Pipeline):  # SD3 keeps its FlowMatchEulerDiscreteScheduler
        cls, kw = SCHEDULERS[sampler]
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    # negative_prompt=None is diffusers' "no negative prompt" (zero embeddings for SDXL).
    out = pipe(
        PROMPT,
        negative_prompt=negative or None,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        latents=noise.clone(),
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        output_type=output_type,
    )
    return out.images


@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
@pytest.mark.parametrize(
    ("arch", "sampler"),
    [(arch, sampler) for arch in ("sd15", "sd21", "sdxl") for sampler in ("ddim", "euler")] + [("sd3", "euler")],
)
def test_sampling_matches_the_diffusers_pipeline(arch, sampler, negative, request):
    model, pipe = _engine_and_pipeline(request, arch)
    ours_sampler = model.make_sampler(sampler, STEPS, GUIDANCE)
    latents = model.generate([PROMPT], seeds=[7], negative_prompt=negative, sampler=ours_sampler, decode=False)
    images = (model.generate([PROMPT], seeds=[7], negative_prompt=negative, sampler=ours_sampler) + 1) / 2
    noise = generation.seeded_noise([7], model.latent_shape)
    their_latents = _diffusers(pipe, sampler, negative, noise, "latent")
    their_images = _diffusers(pipe, sampler, negative, noise, "pt")
    # Latents reach |z| ~ 20 here: compare them relative to their scale (measured: 1.5e-6).
    latent_err = ((latents - their_latents).abs().max() / their_latents.abs().max().clamp(min=1)).item()
    image_err = (images - their_images).abs().max().item()
    assert latent_err < TOL and image_err < TOL, f"{arch}/{sampler}: latents {latent_err:.2e}, images {image_err:.2e}"
    # Non-trivial: the prompt and the guidance scale each move the result far beyond TOL.
    other = model.generate(["a red car"], seeds=[7], negative_prompt=negative, sampler=ours_sampler, decode=False)
    unguided = model.generate([PROMPT], seeds=[7], sampler=model.make_sampler(sampler, STEPS, 1.0), decode=False)
    assert (other - latents).abs().max() > 100 * TOL and (unguided - latents).abs().max() > 100 * TOL


def test_conditioning_equals_encode_prompt(engines, pipelines):
    """Text layers, pooled embedding, time_ids and SDXL's zeroed negative, tensor by tensor."""
    for arch in ("sd15", "sd21"):
        embeds, _ = pipelines[arch].encode_prompt(PROMPT, "cpu", 1, False)
        torch.testing.assert_close(engines[arch].conditioning_for([PROMPT])["crossattn"], embeds, atol=1e-6, rtol=0)
    model, pipe = engines["sdxl"], pipelines["sdxl"]
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True)
    cond, uc = model.conditioning_for([PROMPT]), model.unconditional_for([""])
    torch.testing.assert_close(cond["crossattn"], embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(cond["text_embeds"], pooled, atol=1e-6, rtol=0)
    assert torch.count_nonzero(neg) == 0 and torch.count_nonzero(uc["crossattn"]) == 0
    assert torch.count_nonzero(neg_pooled) == 0 and torch.count_nonzero(uc["text_embeds"]) == 0
    time_ids = pipe._get_add_time_ids(
        (IMAGE_SIZE, IMAGE_SIZE),
        (0, 0),
        (IMAGE_SIZE, IMAGE_SIZE),
        torch.float32,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    torch.testing.assert_close(cond["time_ids"], time_ids)
    torch.testing.assert_close(uc["time_ids"], time_ids)  # size conditioning is never zeroed
    # A non-empty negative prompt is encoded, and mixed batches zero only the empty rows.
    mixed = model.unconditional_for(["", "blurry"])
    assert torch.count_nonzero(mixed["crossattn"][0]) == 0 and torch.count_nonzero(mixed["crossattn"][1]) > 0


def test_sd3_conditioning_equals_encode_prompt(sd3):
    """Joint text tokens (CLIP-L | CLIP-G zero-padded to T5's width, then T5) and the pooled pair."""
    from tests.integration.tiny_pipelines import SD3_T5_TOKENS, SD3_T5_WIDTH

    model, pipe = sd3
    negative = "blurry, low quality"
    with torch.no_grad():
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            PROMPT, PROMPT, PROMPT, device="cpu", negative_prompt=negative, do_classifier_free_guidance=True
        )
        empty, _, empty_pooled, _ = pipe.encode_prompt("", "", "", device="cpu", do_classifier_free_guidance=False)
    cond, uc, blank = (
        model.conditioning_for([PROMPT]),
        model.unconditional_for([negative]),
        model.unconditional_for([""]),
    )
    assert cond["crossattn"].shape == (1, 77 + SD3_T5_TOKENS, SD3_T5_WIDTH) and cond["vector"].shape == (1, 16 + 32)
    for ours, theirs in ((cond["crossattn"], embeds), (cond["vector"], pooled), (uc["crossattn"], neg)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(uc["vector"], neg_pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(blank["crossattn"], empty, atol=1e-6, rtol=0)  # "" is encoded, not zeroed
    torch.testing.assert_close(blank["vector"], empty_pooled, atol=1e-6, rtol=0)
    assert torch.count_nonzero(blank["crossattn"]) > 0
    # the CLIP rows are zero beyond CLIP's 48 channels; T5's rows fill all 64
    assert torch.count_nonzero(cond["crossattn"][:, :77, 48:]) == 0
    assert (
        torch.count_nonzero(cond["crossattn"][:, :77, :48]) > 0
        and torch.count_nonzero(cond["crossattn"][:, 77:, 48:]) > 0
    )


def test_sd3_sample_script_writes_the_pipeline_image(tiny_sd3_pipeline, sd3, tmp_path):
    """scripts/sample.py with configs/models/sd3.yaml: its PNG is the pipeline's image, rounded to 8 bits."""
    import numpy as np
    from PIL import Image

    from tests.scripts import load_script

    steps, scale = 4, 5.0
    written = load_script("sample.py").main(
        [
            "--config",
            "configs/models/sd3.yaml",
            "--set",
            f"model_path={tiny_sd3_pipeline}",
            f"model.params.image_size={IMAGE_SIZE}",
            "--prompt",
            PROMPT,
            "--seed",
            "11",
            "--steps",
            str(steps),
            "--guidance-scale",
            str(scale),
            "--out",
            str(tmp_path / "samples"),
        ]
    )
    ours = np.asarray(Image.open(written[0]).convert("RGB"), dtype=np.float64)  # (H, W, 3) in 0..255
    noise = generation.seeded_noise([11], (16, IMAGE_SIZE // 2, IMAGE_SIZE // 2))
    pipe = sd3[1]
    theirs = pipe(
        PROMPT, num_inference_steps=steps, guidance_scale=scale, latents=noise, height=IMAGE_SIZE, width=IMAGE_SIZE,
        output_type="np",
    ).images[0] * 255  # fmt: skip
    assert ours.shape == theirs.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.abs(ours - theirs).max() <= 0.5 + 255 * 1e-5  # 8-bit rounding of the same image
    assert np.abs(ours - theirs).max() > 0 and ours.std() > 1  # a real picture, really quantized


@pytest.mark.parametrize(("negative", "cfg"), [("", 1.0), ("blurry, low quality", 4.0)], ids=["", "true-cfg"])
def test_flux_sampling_matches_the_diffusers_pipeline(negative, cfg, flux):
    """Guidance embedding 3.5 (FluxPipeline's guidance_scale), dynamic shift, packed latents; with a
    negative prompt, FluxPipeline's true_cfg_scale is our classifier-free guidance."""
    from unlearn.networks.flux import pack_latents

    model, pipe = flux
    steps = 4
    ours_sampler = model.make_sampler("euler", steps, cfg)
    latents = model.generate([PROMPT], seeds=[7], negative_prompt=negative, sampler=ours_sampler, decode=False)
    images = (model.generate([PROMPT], seeds=[7], negative_prompt=negative, sampler=ours_sampler) + 1) / 2
    noise = pack_latents(generation.seeded_noise([7], model.latent_shape))  # (1, 16 tokens, 64)

    def theirs(output_type, guidance=3.5):
        kw = dict(negative_prompt=negative, true_cfg_scale=cfg) if negative else {}
        return pipe(
            PROMPT, num_inference_steps=steps, guidance_scale=guidance, latents=noise.clone(), height=IMAGE_SIZE,
            width=IMAGE_SIZE, output_type=output_type, **kw,
        ).images  # fmt: skip

    their_latents, their_images = theirs("latent"), theirs("pt")
    latent_err = ((pack_latents(latents) - their_latents).abs().max() / their_latents.abs().max().clamp(min=1)).item()
    image_err = (images - their_images).abs().max().item()
    assert latent_err < TOL and image_err < TOL, f"flux: latents {latent_err:.2e}, images {image_err:.2e}"
    # Non-trivial: the guidance embedding and the prompt each move the result far beyond TOL.
    assert (pack_latents(latents) - theirs("latent", guidance=1.0)).abs().max() > 100 * TOL
    other = model.generate(["a red car"], seeds=[7], negative_prompt=negative, sampler=ours_sampler, decode=False)
    assert (other - latents).abs().max() > 100 * TOL


def test_flux_schnell_sampling_matches_the_diffusers_pipeline(tiny_flux_schnell_pipeline):
    """flux.yaml + flux_schnell.yaml: no guidance embedding, shift 1, 4 steps, 256 T5 tokens."""
    from unlearn.networks.flux import pack_latents

    model = load_model(
        ["configs/models/flux.yaml", "configs/models/flux_schnell.yaml"],
        overrides=[f"model_path={tiny_flux_schnell_pipeline}", f"model.params.image_size={IMAGE_SIZE}"],
    )
    pipe = load_diffusers("flux", tiny_flux_schnell_pipeline)
    assert not model.network.guidance_embeds and model.conditioning_for([PROMPT])["crossattn"].shape[1] == 256
    latents = model.generate([PROMPT], seeds=[3], decode=False)  # the config's sampler: 4 steps, no CFG
    noise = pack_latents(generation.seeded_noise([3], model.latent_shape))
    theirs = pipe(
        PROMPT, num_inference_steps=4, guidance_scale=0.0, max_sequence_length=256, latents=noise,
        height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="latent",
    ).images  # fmt: skip
    err = ((pack_latents(latents) - theirs).abs().max() / theirs.abs().max().clamp(min=1)).item()
    assert err < TOL, f"flux schnell: latents {err:.2e}"
    schedule = model.make_sampler("euler", 4, 1.0).get_sigmas()
    assert torch.allclose(schedule[:-1], torch.linspace(1, 0.25, 4))  # shift 1: the plain schedule


def test_flux_conditioning_equals_encode_prompt(flux):
    """CLIP-L's pooled output and T5's 512 tokens, tensor by tensor."""
    from tests.integration.tiny_pipelines import FLUX_T5_TOKENS, FLUX_T5_WIDTH

    model, pipe = flux
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, PROMPT, device="cpu")
    cond = model.conditioning_for([PROMPT])
    assert set(cond) == {"crossattn", "vector"} and cond["crossattn"].shape == (1, FLUX_T5_TOKENS, FLUX_T5_WIDTH)
    torch.testing.assert_close(cond["crossattn"], embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(cond["vector"], pooled, atol=1e-6, rtol=0)
    assert torch.count_nonzero(text_ids) == 0


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_single_file_loads_the_weights_of_its_folder(arch, tiny_pipelines, engines, pipelines, tmp_path):
    """An original-layout .safetensors (UNet, VAE, CLIP / OpenCLIP text towers) + a config folder."""
    from safetensors.torch import save_file

    from tests.integration.ldm_layout import clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm

    pipe = pipelines[arch]
    if arch == "sd15":
        text = clip_to_ldm(pipe.text_encoder)
    elif arch == "sd21":  # a 24-layer-style tower: diffusers' folder dropped the last layer
        text = openclip_to_ldm(pipe.text_encoder)
    else:  # sgm's conditioner: CLIP ViT-L as embedder 0, OpenCLIP bigG as embedder 1
        text = {
            **clip_to_ldm(pipe.text_encoder, prefix="conditioner.embedders.0.transformer."),
            **openclip_to_ldm(pipe.text_encoder_2, extra_layer=False, prefix="conditioner.embedders.1.model."),
        }
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **text}
    state = {k: v.contiguous() for k, v in state.items()}
    if arch == "sd15":  # the .ckpt flavour: a pickled {"state_dict": ...}, as CompVis released SD 1.x
        file = tmp_path / "v1-5-pruned-emaonly.ckpt"
        torch.save({"state_dict": state, "global_step": 840000}, file)
    else:
        file = tmp_path / f"{arch}.safetensors"
        save_file(state, str(file))
    configs = tmp_path / "configs"  # the folder without any weights
    shutil.copytree(tiny_pipelines[arch], configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))

    single = load_model(
        [f"configs/models/{arch}.yaml"],
        overrides=[f"model_path={file}", f"model_config={configs}", f"model.params.image_size={IMAGE_SIZE}"],
    )
    expected = engines[arch].state_dict()
    got = single.state_dict()
    assert got.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_fp8_scaled_sdxl_file_loads_its_unet_weights_times_their_scales(suffix, tiny_pipelines, pipelines, tmp_path):
    """A ComfyUI-style scaled float8 SDXL file: the UNet loads each weight as q * s, not as q, from a
    .safetensors file and from a pickled {"state_dict": ...} .ckpt (read with weights_only)."""
    from safetensors.torch import save_file

    from tests.integration.fp8_layout import scaled_fp8
    from tests.integration.ldm_layout import clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm

    pipe = pipelines["sdxl"]
    rest = {
        **vae_to_ldm(pipe.vae),
        **clip_to_ldm(pipe.text_encoder, prefix="conditioner.embedders.0.transformer."),
        **openclip_to_ldm(pipe.text_encoder_2, extra_layer=False, prefix="conditioner.embedders.1.model."),
    }
    unet, unet_expected = scaled_fp8(unet_to_ldm(pipe.unet), per_row=True)
    configs = tmp_path / "configs"
    shutil.copytree(tiny_pipelines["sdxl"], configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    models = {}
    for name, network in (("scaled", unet), ("expected", unet_expected)):
        file = tmp_path / f"{name}{suffix}"
        state = {k: v.contiguous() for k, v in {**network, **rest}.items()}
        if suffix == ".ckpt":
            torch.save({"state_dict": state}, file)
        else:
            save_file(state, str(file))
        overrides = [f"model_path={file}", f"model_config={configs}", f"model.params.image_size={IMAGE_SIZE}"]
        models[name] = load_model(["configs/models/sdxl.yaml"], overrides=overrides).state_dict()
    got, expected = models["scaled"], models["expected"]
    assert got.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    key = next(k for k in got if k.endswith("attn1.to_q.weight"))
    assert not torch.equal(got[key], pipe.unet.state_dict()[key.removeprefix("network.unet.")])  # float8 rounding


def test_single_file_errors_name_what_is_missing(tiny_pipelines, pipelines, tmp_path):
    from safetensors.torch import save_file

    from tests.integration.ldm_layout import clip_to_ldm, unet_to_ldm
    from unlearn.conditioning import CLIPTextEmbedder

    file = tmp_path / "unet_only.safetensors"
    save_file({k: v.contiguous() for k, v in unet_to_ldm(pipelines["sd15"].unet).items()}, str(file))
    with pytest.raises(ValueError, match="set single_file_config .* text_encoder/config.json"):
        CLIPTextEmbedder(pretrained_path=str(file), subfolder="text_encoder")
    # A file without text encoders leaves them to single_file_config's folder, which must hold their weights.
    configs = shutil.copytree(
        tiny_pipelines["sd15"], tmp_path / "configs", ignore=shutil.ignore_patterns("*.safetensors")
    )
    with pytest.raises(
        FileNotFoundError,
        match=r"single_file_config='.*configs' has no text_encoder/ weights .*: pretrained_path='.*unet_only."
        r"safetensors' holds no CLIP text encoder, so it loads from that folder",
    ):
        CLIPTextEmbedder(pretrained_path=str(file), subfolder="text_encoder", single_file_config=str(configs))
    embedder = CLIPTextEmbedder(
        pretrained_path=str(file), subfolder="text_encoder", single_file_config=str(tiny_pipelines["sd15"])
    )
    expected = pipelines["sd15"].text_encoder.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in embedder.transformer.state_dict().items())
    # A file whose text encoders have other widths names the widths it holds.
    clip16 = tmp_path / "clip16.safetensors"
    save_file({k: v.contiguous() for k, v in clip_to_ldm(pipelines["sd15"].text_encoder).items()}, str(clip16))
    with pytest.raises(
        ValueError, match=r"holds no text encoder of width 32 .* found: \{'cond_stage_model.transformer.': 16\}"
    ):
        CLIPTextEmbedder(
            pretrained_path=str(clip16),
            subfolder="text_encoder_2",
            single_file_config=str(tiny_pipelines["sdxl"]),
            with_projection=True,
        )
