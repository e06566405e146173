"""Tiny random SD 1.x, SD 2.x, SDXL, SD3 and Flux pipelines with the real architectures (not a test module).

Each is a real diffusers pipeline, shrunk: the same component classes and wiring (CLIP text
encoders with the full 49408-token vocabulary and the offline CLIP tokenizer, AutoencoderKL,
UNet2DConditionModel with SD 2.x's linear projections and SDXL's text_time embedding), saved
with ``save_pretrained`` so the engine and diffusers load the very same folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unlearn.conditioning.tokenizer import EOS_TOKEN, build_clip_tokenizer

IMAGE_SIZE = 16  # pixels; the VAE downsamples by 2, so latents are 8 x 8
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _text_config(hidden: int, act: str, projection: int = 16) -> dict:
    return dict(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def _vae(scaling_factor: float = 0.18215, **overrides):
    from diffusers import AutoencoderKL

    config = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
    )
    return AutoencoderKL(**{**config, **overrides})


# SD3's and Flux's VAE: 16 latent channels, a shift factor, no quant convs.
FLOW_VAE = dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)


def _unet(cross_attention_dim: int, **kwargs):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=4,
        **kwargs,
    )


def _tokenizer(cache: Path, pad_token: str = EOS_TOKEN):
    return build_clip_tokenizer(cache_dir=cache, max_length=77, pad_token=pad_token)


def build_sd15(folder: Path, cache: Path) -> Path:
    """SD 1.x: eps, CLIP (quick_gelu) last layer, DDIM with SD 1.5's timestep settings."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(16, "quick_gelu"))),
        tokenizer=_tokenizer(cache),
        unet=_unet(16, attention_head_dim=4),
        scheduler=DDIMScheduler(
            **SD_BETAS, clip_sample=False, set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd21(folder: Path, cache: Path) -> Path:
    """SD 2.x-v: v-prediction, OpenCLIP-as-CLIPTextModel (gelu, "!" padding), linear projections."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(16, "gelu"))),
        tokenizer=_tokenizer(cache, pad_token="!"),
        unet=_unet(16, attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True),
        scheduler=DDIMScheduler(
            **SD_BETAS,
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type="v_prediction",
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sdxl(folder: Path, cache: Path) -> Path:
    """SDXL: two encoders (16 + 32 channels), pooled projection (16), time_ids, Euler leading."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(2)
    time_dim = 8
    pooled = 16
    pipe = StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(16, "quick_gelu"))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(32, "gelu", projection=pooled))),
        tokenizer=_tokenizer(cache),
        tokenizer_2=_tokenizer(cache, pad_token="!"),
        unet=_unet(
            16 + 32,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=pooled + 6 * time_dim,
        ),
        scheduler=EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


BUILDERS = {"sd15": build_sd15, "sd21": build_sd21, "sdxl": build_sdxl}


# SD3's joint text tokens: CLIP-L (16) and CLIP-G (32) side by side, zero-padded to T5's 64 channels.
def _tiny_t5(vocab_size: int, width: int, d_ff: int, d_kv: int):
    """A 2-layer T5 encoder (gated GELU, as T5 v1.1 / T5-XXL) for the tiny SD3 and Flux pipelines."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_ff=d_ff,
        d_kv=d_kv,
        num_heads=4,
        num_layers=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config)


SD3_T5_WIDTH = 64
SD3_T5_TOKENS = 256  # the pipeline's default max_sequence_length


def build_sd3(folder: Path, cache: Path) -> Path:
    """SD3 (MMDiT): two CLIP encoders with projection (pooled 16 + 32), a T5 encoder (64 channels,
    the offline stand-in tokenizer), the 16-channel VAE with shift and scale, flow matching shift 3.
    Not in BUILDERS: the UNet fixtures and their training recipe do not apply."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from unlearn.conditioning.t5_tokenizer import build_t5_tokenizer

    torch.manual_seed(3)
    t5_vocab = 300
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=IMAGE_SIZE // 2,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=SD3_T5_WIDTH,
            caption_projection_dim=16,
            pooled_projection_dim=16 + 32,
            pos_embed_max_size=16,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(scaling_factor=1.5305, shift_factor=0.0609, **FLOW_VAE),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(16, "quick_gelu", projection=16))),
        tokenizer=_tokenizer(cache),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(32, "gelu", projection=32))),
        tokenizer_2=_tokenizer(cache, pad_token="!"),
        text_encoder_3=_tiny_t5(t5_vocab, SD3_T5_WIDTH, d_ff=128, d_kv=16),
        tokenizer_3=build_t5_tokenizer(vocab_size=t5_vocab, extra_ids=0, max_length=512),
    )
    pipe.save_pretrained(folder)
    return folder


FLUX_T5_WIDTH = 32
FLUX_T5_TOKENS = 512  # FluxPipeline's default max_sequence_length


def build_flux(folder: Path, cache: Path, schnell: bool = False) -> Path:
    """Flux.1-dev: CLIP-L pooled (16), T5 (32 channels, the stand-in tokenizer), a guidance-embedding
    MMDiT with RoPE over packed 16-channel latents, the VAE's shift and scale, dynamic shifting.
    ``schnell``: Flux.1-schnell's differences: no guidance embedding, a static schedule (shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearn.conditioning.t5_tokenizer import build_t5_tokenizer

    torch.manual_seed(5 if schnell else 4)
    t5_vocab = 300
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel(
            patch_size=1,
            in_channels=16 * 4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=FLUX_T5_WIDTH,
            pooled_projection_dim=16,
            guidance_embeds=not schnell,
            axes_dims_rope=[4, 6, 6],
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=1.0 if schnell else 3.0,
            use_dynamic_shifting=not schnell,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_vae(scaling_factor=0.3611, shift_factor=0.1159, **FLOW_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(16, "quick_gelu"))),
        tokenizer=_tokenizer(cache),
        text_encoder_2=_tiny_t5(t5_vocab, FLUX_T5_WIDTH, d_ff=64, d_kv=8),
        tokenizer_2=build_t5_tokenizer(vocab_size=t5_vocab, extra_ids=0, max_length=512),
    )
    pipe.save_pretrained(folder)
    return folder


def load_diffusers(arch: str, folder: Path):
    """The same folder through diffusers' own pipeline class, offline."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    pipelines = {"sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}
    cls = pipelines.get(arch, StableDiffusionPipeline)
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
