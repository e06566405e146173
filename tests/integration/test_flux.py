"""Flux (configs/models/flux.yaml + configs/trainer/flow_matching.yaml) on the tiny random pipeline:
the flow-matching step trains the transformer on its velocity, and make_random_model --arch flux."""

from __future__ import annotations

import pytest
import torch

from tests.integration.tiny_pipelines import IMAGE_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flux_trainable(tiny_flux_pipeline):
    from unlearn.engine.loading import load_model

    return load_model(
        ["configs/models/flux.yaml", "configs/trainer/flow_matching.yaml"],
        overrides=[f"model_path={tiny_flux_pipeline}", f"model.params.image_size={IMAGE_SIZE}"],
    )


def test_training_step_is_the_velocity_loss_of_the_transformer(flux_trainable):
    model = flux_trainable
    g = torch.Generator().manual_seed(0)
    batch = {"jpg": torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 2 - 1, "txt": ["a cat", "a red car"]}
    model.train()
    torch.manual_seed(0)  # the loss draws sigma, then noise, from the global generator
    loss = model.training_step(batch, 0)
    loss.backward()
    torch.manual_seed(0)
    sigma = torch.sigmoid(torch.randn(2))
    with torch.no_grad():
        z = model.encode_first_stage(batch["jpg"])
        assert model.first_stage.shift_factor == 0.1159 and model.first_stage.scale_factor == 0.3611
        noise = torch.randn(z.shape)
        cond = model.conditioner(batch)
        s = sigma.view(-1, 1, 1, 1)
        v = model.network(((1 - s) * z + s * noise), 1000 * sigma, cond)  # packed, guidance 3.5, t / 1000
    torch.testing.assert_close(loss.detach(), ((v - (noise - z)) ** 2).mean(), rtol=1e-5, atol=0)
    grads = [p.grad for p in model.network.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert not any(p.requires_grad for p in model.conditioner.parameters())
    assert not any(p.requires_grad for p in model.first_stage.parameters())


@pytest.mark.slow  # about 11 s; the SD3 case in test_sd3.py covers the same code path by default
def test_make_random_model_writes_a_flux_folder_both_load(tmp_path, monkeypatch):
    """scripts/make_random_model.py --arch flux, shrunk (the real one is 17B parameters)."""
    from diffusers import FluxPipeline

    from tests.scripts import load_script
    from unlearn.engine.loading import load_model
    from unlearn.networks import architectures

    real = architectures.ARCHITECTURES["flux"]
    clip = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    tiny = dict(
        real,
        transformer=dict(
            real["transformer"], num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6],
        ),
        vae=dict(
            real["vae"], block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=4,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
        ),
        text_encoders=[(dict(clip, max_position_embeddings=77, projection_dim=16), False, "<|endoftext|>")],
        t5=dict(real["t5"], d_model=32, d_ff=32, d_kv=8, num_heads=2, num_layers=1),
    )  # fmt: skip
    monkeypatch.setitem(architectures.ARCHITECTURES, "flux", tiny)
    folder = load_script("make_random_model.py").main(["--arch", "flux", "--out", str(tmp_path / "flux")])
    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    assert len(pipe.tokenizer_2) == 32100 and pipe.scheduler.config.use_dynamic_shifting
    model = load_model(
        ["configs/models/flux.yaml"], overrides=[f"model_path={folder}", f"model.params.image_size={IMAGE_SIZE}"]
    )
    assert torch.equal(
        model.network.transformer.state_dict()["proj_out.weight"], pipe.transformer.state_dict()["proj_out.weight"]
    )
    images = model.generate(["a cat"], seeds=[0], num_steps=2)
    assert images.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(images).all() and images.std() > 0
