"""SD3 (configs/models/sd3.yaml + configs/trainer/flow_matching.yaml) on the tiny random pipeline:
the flow-matching training step trains the transformer on its velocity, and the VAE's shift and scale."""

from __future__ import annotations

import pytest
import torch

from tests.integration.tiny_pipelines import IMAGE_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd3_trainable(tiny_sd3_pipeline):
    from unlearn.engine.loading import load_model

    return load_model(
        ["configs/models/sd3.yaml", "configs/trainer/flow_matching.yaml"],
        overrides=[
            f"model_path={tiny_sd3_pipeline}",
            f"model.params.image_size={IMAGE_SIZE}",
            "model.params.gradient_checkpointing=true",
        ],
    )


def _batch():
    g = torch.Generator().manual_seed(0)
    return {"jpg": torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 2 - 1, "txt": ["a cat", "a red car"]}


def test_training_step_is_the_velocity_loss_of_the_transformer(sd3_trainable):
    model, batch = sd3_trainable, _batch()
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the loss draws sigma, then noise, from the global generator
    loss = model.training_step(batch, 0)
    loss.backward()
    # the same draws by hand: SD3's logit-normal sigma, x = (1 - s) z + s n, target n - z
    torch.manual_seed(0)
    sigma = torch.sigmoid(torch.randn(2))
    with torch.no_grad():
        z = model.encode_first_stage(batch["jpg"])
        noise = torch.randn(z.shape)  # contiguous, as the loss draws it
        cond = model.conditioner(batch)
        s = sigma.view(-1, 1, 1, 1)
        v = model.network.transformer(
            hidden_states=(1 - s) * z + s * noise,
            timestep=1000 * sigma,
            encoder_hidden_states=cond["crossattn"],
            pooled_projections=cond["vector"],
        ).sample
    expected = ((v - (noise - z)) ** 2).mean()
    assert torch.isfinite(loss) and loss.item() > 0
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=0)
    grads = [p.grad for p in model.network.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert not any(p.requires_grad for p in model.conditioner.parameters())  # text encoders frozen
    assert not any(p.requires_grad for p in model.first_stage.parameters())  # VAE frozen
    model.zero_grad(set_to_none=True)


def test_vae_latents_carry_the_shift_and_scale(sd3_trainable):
    vae = sd3_trainable.first_stage
    assert (vae.shift_factor, vae.scale_factor) == (0.0609, 1.5305) and vae.latent_channels == 16
    images = _batch()["jpg"]
    with torch.no_grad():
        raw = vae.vae.encode(images).latent_dist.mode()
        z = vae.encode(images)
        torch.testing.assert_close(z, (raw - 0.0609) * 1.5305)
        torch.testing.assert_close(vae.decode(z), vae.vae.decode(raw).sample, atol=1e-5, rtol=0)
    assert sd3_trainable.latent_shape == (16, IMAGE_SIZE // 2, IMAGE_SIZE // 2)


def test_make_random_model_writes_an_sd3_folder_both_load(tmp_path, monkeypatch):
    """scripts/make_random_model.py --arch sd3, shrunk (the real one is 7.7B parameters): the folder
    loads in configs/models/sd3.yaml and in StableDiffusion3Pipeline, stand-in T5 tokenizer included."""
    from diffusers import StableDiffusion3Pipeline

    from tests.scripts import load_script
    from unlearn.engine.loading import load_model
    from unlearn.networks import architectures

    clip = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    tiny = {
        "transformer": dict(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
            pos_embed_max_size=16,
        ),
        "vae": dict(
            block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=4,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=16, shift_factor=0.0609,
            scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False,
        ),
        "text_encoders": [
            (dict(clip, max_position_embeddings=77, projection_dim=16), True, "<|endoftext|>"),
            (dict(clip, max_position_embeddings=77, projection_dim=16, hidden_act="gelu"), True, "!"),
        ],
        "t5": dict(architectures.ARCHITECTURES["sd3"]["t5"], d_model=32, d_ff=32, d_kv=8, num_heads=2, num_layers=1),
        "scheduler": architectures.ARCHITECTURES["sd3"]["scheduler"],
    }  # fmt: skip
    monkeypatch.setitem(architectures.ARCHITECTURES, "sd3", tiny)
    folder = load_script("make_random_model.py").main(["--arch", "sd3", "--out", str(tmp_path / "sd3")])
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), local_files_only=True)
    assert len(pipe.tokenizer_3) == 32100 and pipe.scheduler.config.shift == 3.0
    model = load_model(["configs/models/sd3.yaml"], overrides=[f"model_path={folder}", "model.params.image_size=16"])
    assert torch.equal(
        model.network.transformer.state_dict()["proj_out.weight"], pipe.transformer.state_dict()["proj_out.weight"]
    )
    images = model.generate(["a cat"], seeds=[0], num_steps=2, guidance_scale=3.0)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all() and images.std() > 0
