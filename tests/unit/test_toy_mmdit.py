"""The toy MMDiT: its training recipe (configs/toy/mmdit_base.yaml) on a tiny transformer, and its
model config (configs/models/toy_mmdit.yaml), which must describe the model the recipe trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from unlearn.config import instantiate_from_config, load_configs
from unlearn.engine.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "toy" / "mmdit_base.yaml"
MODEL = ROOT / "configs" / "models" / "toy_mmdit.yaml"

NET = "model.params.network_config.params.config"
TINY = [f"{NET}.num_layers=2", f"{NET}.num_attention_heads=2", f"{NET}.attention_head_dim=16"]
TINY += [f"{NET}.caption_projection_dim=32"]  # = heads x head dim
# What a model config shares with its recipe; the recipe adds the loss, optimizer and schedule.
MODEL_KEYS = (
    "image_size",
    "log_guidance_scale",
    "log_num_steps",
    "metadata",
    "first_stage_config",
    "network_config",
    "denoiser_config",
    "conditioner_config",
    "sampler_config",
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_training_step_of_the_recipe_trains_both_text_pathways():
    torch.manual_seed(0)
    cfg = load_configs([RECIPE], [*TINY, "data.params.batch_size=4", "data.params.num_workers=0"])
    model = instantiate_from_config(cfg.model).train()
    batch = next(iter(instantiate_from_config(cfg.data).train_dataloader()))
    assert model.latent_shape == (48, 8, 8)

    x = model.encode_first_stage(batch["jpg"])
    with torch.no_grad():
        cond = model.condition(batch)
        out = model.network(x, torch.full((4,), 500.0), cond)
    assert cond["crossattn"].shape == (4, 16, 64) and cond["vector"].shape == (4, 64)
    assert out.shape == x.shape == (4, 48, 8, 8) and torch.isfinite(out).all()

    optimizers, _ = model.configure_optimizers()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = model.training_step(batch, 0)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    optimizers[0].step()

    # A velocity regression from a random start: about 1 + Var(x0) per element, finite.
    assert loss.ndim == 0 and torch.isfinite(loss) and 0.5 < loss.item() < 10
    # Text reaches the transformer twice, as in SD3: the joint tokens (context_embedder) and the
    # pooled vector (text_embedder); the text encoder learns through both.
    # (transformers 4 nests the text model's final LayerNorm under text_model., 5 does not).
    text_norm = next(n for n in grads if n.startswith("conditioner.") and n.endswith("final_layer_norm.weight"))
    after = dict(model.named_parameters())
    for name in (
        "network.transformer.context_embedder.weight",
        "network.transformer.time_text_embed.text_embedder.linear_1.weight",
        "network.transformer.transformer_blocks.0.attn.add_k_proj.weight",
        text_norm,
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
        assert not torch.equal(before[name], after[name]), name

    images = model.generate(["a striped circle"], seeds=[0], num_steps=2, guidance_scale=3.0)
    assert images.shape == (1, 3, 32, 32) and float(images.abs().max()) <= 1


def test_model_config_describes_the_model_the_recipe_trains():
    recipe = OmegaConf.to_container(load_configs([RECIPE]).model.params, resolve=True)
    model = OmegaConf.to_container(load_configs([MODEL]).model.params, resolve=True)
    for key in MODEL_KEYS:
        assert model[key] == recipe[key], key
    assert model["ckpt_path"] == "checkpoints/toy/mmdit_base.safetensors" and "ckpt_path" not in recipe
    # The flow is trained at the noise levels it is sampled at.
    shift = recipe["loss_fn_config"]["params"]["sigma_sampler_config"]["params"]["shift"]
    assert shift == model["sampler_config"]["params"]["discretization_config"]["params"]["shift"] == 3.0


def test_model_config_without_its_weights_names_the_key(tmp_path):
    missing = tmp_path / "mmdit_base.safetensors"
    with pytest.raises(FileNotFoundError, match=r"^model\.params\.ckpt_path: no such file"):
        load_model([MODEL], overrides=[*TINY, f"model.params.ckpt_path={missing}"])
