"""The real SD 1.5, SD 2.1 (768-v), SDXL base, SD3-medium and Flux.1-dev architectures, for random-weight models.

Speed and memory at real scale can be measured without downloading any weights, on random
weights of the real architectures. The component configs are those of the released
diffusers repos (stable-diffusion-v1-5, stable-diffusion-2-1, stable-diffusion-xl-base-1.0,
stable-diffusion-3-medium-diffusers, FLUX.1-dev); tests check the parameter counts against the published ones:

==========  ===================  ==========  ===================================================
model       UNet / transformer   VAE         text encoder(s)
==========  ===================  ==========  ===================================================
SD 1.5      859,520,964          83,653,863  CLIP ViT-L/14 123,060,480
SD 2.1      865,910,724          83,653,863  OpenCLIP ViT-H/14, 23 of 24 layers, 340,387,840
SDXL base   2,567,463,684        83,653,863  CLIP ViT-L/14 + OpenCLIP bigG/14 694,659,840
SD3-medium  MMDiT 2,028,328,000  83,819,683  CLIP ViT-L/14 with projection 123,650,304 + OpenCLIP
                                             bigG/14 694,659,840 + T5-XXL encoder 4,762,310,656
Flux.1-dev  MMDiT 11,901,408,320 83,819,683  CLIP ViT-L/14 123,060,480 + T5-XXL encoder 4,762,310,656
==========  ===================  ==========  ===================================================

SD3's and Flux's T5 tokenizer is the offline stand-in of `unlearn.conditioning.t5_tokenizer` (T5's
SentencePiece vocabulary ships with no package here); the CLIP ones are the real vocabulary.

`save_random_pipeline` writes such a model as a diffusers folder (``model_path`` of
``configs/models/<arch>.yaml``); ``scripts/make_random_model.py`` is its command line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARCHITECTURES", "build_components", "save_random_pipeline"]

log = logging.getLogger(__name__)

_CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
_OPENCLIP_H = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
_OPENCLIP_BIGG = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)
_T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    is_encoder_decoder=False,
    tie_word_embeddings=False,
)
_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "sd15": {
        "unet": dict(sample_size=64, cross_attention_dim=768),  # otherwise diffusers' defaults
        "vae": dict(_VAE, sample_size=512),
        "text_encoders": [(_CLIP_L, False, "<|endoftext|>")],  # (config, with_projection, pad token)
        "scheduler": ("PNDMScheduler", dict(_SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False)),
    },
    "sd21": {
        "unet": dict(
            sample_size=96,
            cross_attention_dim=1024,
            attention_head_dim=[5, 10, 20, 20],
            use_linear_projection=True,
            upcast_attention=True,
        ),
        "vae": dict(_VAE, sample_size=768),
        "text_encoders": [(_OPENCLIP_H, False, "!")],
        "scheduler": (
            "DDIMScheduler",
            dict(_SD_BETAS, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False),
        ),
    },
    "sdxl": {
        "unet": dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=[1, 2, 10],
            attention_head_dim=[5, 10, 20],
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        "vae": dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        "text_encoders": [(_CLIP_L, False, "<|endoftext|>"), (_OPENCLIP_BIGG, True, "!")],
        "scheduler": ("EulerDiscreteScheduler", dict(_SD_BETAS, timestep_spacing="leading")),
    },
    "sd3": {
        "transformer": dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=192,
        ),
        "vae": dict(
            _VAE,
            latent_channels=16,
            sample_size=1024,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
            force_upcast=True,
        ),
        "text_encoders": [(_CLIP_L, True, "<|endoftext|>"), (_OPENCLIP_BIGG, True, "!")],
        "t5": _T5_XXL,
        "scheduler": ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0)),
    },
    "flux": {
        "transformer_class": "FluxTransformer2DModel",
        "transformer": dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=[16, 56, 56],
        ),
        "vae": dict(
            _VAE,
            latent_channels=16,
            sample_size=1024,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        "text_encoders": [(_CLIP_L, False, "<|endoftext|>")],
        "t5": _T5_XXL,
        "scheduler": (
            "FlowMatchEulerDiscreteScheduler",
            dict(
                num_train_timesteps=1000,
                shift=3.0,
                use_dynamic_shifting=True,
                base_shift=0.5,
                max_shift=1.15,
                base_image_seq_len=256,
                max_image_seq_len=4096,
            ),
        ),
    },
}


def _architecture(arch: str) -> dict[str, Any]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: expected one of {sorted(ARCHITECTURES)}, got {arch!r}")
    return ARCHITECTURES[arch]


def build_components(arch: str) -> dict[str, Any]:
    """UNet (or the SD3 / Flux transformer), VAE and text encoder(s) of ``arch`` with random weights,
    on the current default device (``with torch.device("meta"):`` builds them without memory)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    spec = _architecture(arch)
    parts: dict[str, Any] = {}
    if "unet" in spec:
        parts["unet"] = UNet2DConditionModel(**spec["unet"])
    if "transformer" in spec:
        cls = getattr(diffusers, spec.get("transformer_class", "SD3Transformer2DModel"))
        parts["transformer"] = cls(**spec["transformer"])
    parts["vae"] = AutoencoderKL(**spec["vae"])
    for i, (config, with_projection, _) in enumerate(spec["text_encoders"]):
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        parts["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = cls(CLIPTextConfig(**config))
    if "t5" in spec:
        parts[f"text_encoder_{len(spec['text_encoders']) + 1}"] = T5EncoderModel(T5Config(**spec["t5"]))
    return parts


def save_random_pipeline(arch: str, folder: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a random-weight ``arch`` model as a diffusers pipeline folder; returns the folder."""
    import diffusers
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    from unlearn.conditioning.t5_tokenizer import build_t5_tokenizer
    from unlearn.conditioning.tokenizer import build_clip_tokenizer

    spec = _architecture(arch)
    torch.manual_seed(seed)
    parts = {k: v.to(dtype) for k, v in build_components(arch).items()}
    for i, (_, _, pad) in enumerate(spec["text_encoders"]):
        parts["tokenizer" if i == 0 else f"tokenizer_{i + 1}"] = build_clip_tokenizer(max_length=77, pad_token=pad)
    if "t5" in spec:
        parts[f"tokenizer_{len(spec['text_encoders']) + 1}"] = build_t5_tokenizer(max_length=512)
    name, kwargs = spec["scheduler"]
    parts["scheduler"] = getattr(diffusers, name)(**kwargs)
    if arch == "sd3":
        pipe = StableDiffusion3Pipeline(**parts)
    elif arch == "flux":
        pipe = FluxPipeline(**parts)
    elif arch == "sdxl":
        pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    folder = Path(folder)
    pipe.save_pretrained(folder)
    log.info("wrote a random-weight %s (%s) to %s", arch, dtype, folder)
    return folder
