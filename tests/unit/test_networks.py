"""UNet adapter and first stages: local loading, routing of conditioning, clear errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from unlearn.networks import DiffusersAutoencoderKL, DiffusersUNet, IdentityFirstStage

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=12,
    attention_head_dim=4,
    norm_num_groups=4,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=4,
)


@pytest.fixture
def unet_folder(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    return tmp_path / "pipe", unet


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 4, 8, 8, generator=g),
        torch.tensor([10.0, 500.0][:batch]),
        {"crossattn": torch.randn(batch, 5, 12, generator=g)},
    )


def test_pipeline_folder_loads_identical_weights(unet_folder):
    folder, reference = unet_folder
    net = DiffusersUNet(pretrained_path=str(folder))
    x, t, cond = _inputs()
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=cond["crossattn"]).sample
        assert torch.allclose(net(x, t, cond), expected, atol=1e-6)
    assert net.in_channels == 4 and net.cross_attention_dim == 12
    # The unet folder itself works too.
    assert DiffusersUNet(pretrained_path=str(folder / "unet"), subfolder=None).in_channels == 4


def test_scalar_timestep_is_broadcast():
    torch.manual_seed(0)
    net = DiffusersUNet(config=TINY_UNET)
    x, _, cond = _inputs()
    with torch.no_grad():
        a = net(x, torch.tensor(300.0), cond)
        b = net(x, torch.tensor([300.0, 300.0]), cond)
    assert torch.equal(a, b)


def test_single_file_needs_a_local_config(unet_folder, tmp_path):
    folder, _ = unet_folder
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not really")
    with pytest.raises(ValueError, match="single_file_config .* or original_config"):
        DiffusersUNet(single_file=str(ckpt))
    with pytest.raises(FileNotFoundError, match="single_file: no such file"):
        DiffusersUNet(single_file=str(tmp_path / "missing.safetensors"), single_file_config=str(folder))


def test_missing_paths_and_hub_ids_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pretrained_path: no such folder"):
        DiffusersUNet(pretrained_path=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="looks like a Hugging Face Hub id.*never downloads"):
        DiffusersUNet(pretrained_path="runwayml/stable-diffusion-v1-5")
    # A missing local file is named as missing, not mistaken for a repository id.
    from unlearn.paths import looks_like_hub_id

    assert looks_like_hub_id("runwayml/stable-diffusion-v1-5")
    assert not looks_like_hub_id("checkpoints/missing.safetensors")
    monkeypatch.chdir(tmp_path)
    assert looks_like_hub_id("weights/sd15")
    (tmp_path / "weights").mkdir()  # now a local folder the user meant
    assert not looks_like_hub_id("weights/sd15")
    with pytest.raises(FileNotFoundError, match="single_file: no such file: 'models/missing.ckpt'"):
        DiffusersUNet(single_file="models/missing.ckpt", single_file_config=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no unet/config.json"):
        DiffusersUNet(pretrained_path=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="exactly one of"):
        DiffusersUNet()
    with pytest.raises(ValueError, match="attention: expected one of"):
        DiffusersUNet(config=TINY_UNET, attention="flash3")


def test_class_labels_and_concat_are_routed():
    torch.manual_seed(0)
    cfg = dict(TINY_UNET, in_channels=6, class_embed_type="projection", projection_class_embeddings_input_dim=3)
    net = DiffusersUNet(config=cfg)
    x, t, cond = _inputs()
    concat = torch.randn(2, 2, 8, 8)
    vector = torch.randn(2, 3)
    with torch.no_grad():
        out = net(x, t, {**cond, "concat": concat, "vector": vector})
        ref = net.unet(
            torch.cat([x, concat], 1), t, encoder_hidden_states=cond["crossattn"], class_labels=vector
        ).sample
        other = net(x, t, {**cond, "concat": concat, "vector": torch.zeros(2, 3)})
    assert out.shape == (2, 4, 8, 8)
    assert torch.equal(out, ref)
    assert not torch.allclose(out, other)
    assert net.in_channels == 6


def test_gradient_checkpointing_switch():
    net = DiffusersUNet(config=TINY_UNET, gradient_checkpointing=True)
    assert net.unet.is_gradient_checkpointing
    net.set_gradient_checkpointing(False)
    assert not net.unet.is_gradient_checkpointing


def test_vae_first_stage_scales_latents(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    stage = DiffusersAutoencoderKL(pretrained_path=str(tmp_path / "pipe"))
    assert stage.scale_factor == 0.5 and stage.downsample_factor == 2 and stage.latent_channels == 4
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    z = stage.encode(x)
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mode() * 0.5
        assert torch.allclose(z, expected, atol=1e-6)
        assert torch.allclose(stage.decode(z), vae.decode(z / 0.5).sample, atol=1e-6)
    stage.train()
    assert not stage.vae.training  # the VAE never trains
    assert not any(p.requires_grad for p in stage.parameters())


def test_identity_first_stage():
    stage = IdentityFirstStage()
    x = torch.randn(2, 3, 4, 4)
    assert stage.encode(x) is x and stage.decode(x) is x and stage.downsample_factor == 1


def test_pixel_unshuffle_first_stage_is_a_lossless_fold():
    from unlearn.networks import PixelUnshuffleFirstStage

    stage = PixelUnshuffleFirstStage(factor=4)
    assert stage.downsample_factor == 4 and stage.latent_channels == 48
    x = torch.randn(2, 3, 32, 32)
    z = stage.encode(x)
    assert z.shape == (2, 48, 8, 8)
    # Channel c*16 + 4*i + j of position (p, q) holds pixel (4p + i, 4q + j) of channel c.
    assert z[1, 2 * 16 + 4 * 3 + 1, 5, 6] == x[1, 2, 4 * 5 + 3, 4 * 6 + 1]
    assert torch.equal(stage.decode(z), x)
    # A permutation keeps i.i.d. Gaussian noise i.i.d.: same values, same norm.
    assert torch.equal(z.flatten().sort().values, x.flatten().sort().values)
    with pytest.raises(ValueError, match="factor"):
        PixelUnshuffleFirstStage(factor=0)
