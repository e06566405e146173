"""The toy MMDiT's whole path through main.py on a tiny transformer: the recipe
(configs/toy/mmdit_base.yaml) trains, scripts/export_model.py exports the run, and ESD-x erases
with the model config (configs/models/toy_mmdit.yaml) on the exported weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from tests.scripts import load_script
from unlearn import cli
from unlearn.engine.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "toy" / "mmdit_base.yaml"
MODEL = ROOT / "configs" / "models" / "toy_mmdit.yaml"
ESD = ROOT / "configs" / "methods" / "esd_x.yaml"

NET = "model.params.network_config.params.config"
TINY = [f"{NET}.num_layers=2", f"{NET}.num_attention_heads=2", f"{NET}.attention_head_dim=16"]
TINY += [f"{NET}.caption_projection_dim=32"]
QUIET = ["lightning.trainer.enable_model_summary=false", "lightning.trainer.enable_progress_bar=false"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipe_trains_exports_and_esd_erases_on_the_toy_mmdit(tmp_path):
    run = cli.main(
        [
            "--base",
            str(RECIPE),
            *TINY,
            *QUIET,
            "data.params.batch_size=4",
            "data.params.val_length=4",
            "data.params.num_workers=0",
            "lightning.trainer.max_steps=2",
            "lightning.trainer.limit_val_batches=1",
            "lightning.callbacks.image_logger=null",
            "--logdir",
            str(tmp_path),
            "--name",
            "toy-mmdit",
        ]
    )
    weights = tmp_path / "mmdit.safetensors"
    load_script("export_model.py").main(["--run", str(run), "--out", str(weights), "--dtype", "float16"])
    with safe_open(str(weights), "pt") as f:
        shipped = set(f.keys())
    model = load_model([MODEL], overrides=[*TINY, f"model.params.ckpt_path={weights}"])
    assert {k for k in model.state_dict() if k.startswith(("network.", "conditioner."))} <= shipped

    erased_run = cli.main(
        [
            "--base",
            str(MODEL),
            str(ESD),
            *TINY,
            *QUIET,
            f"model.params.ckpt_path={weights}",
            "concept=outlined",
            "ddim_steps=3",
            "lr=1e-2",
            "model.params.trajectory_config.params.pool_size=2",
            "lightning.trainer.max_steps=2",
            "lightning.callbacks.toy_benchmark=null",
            "--logdir",
            str(tmp_path),
            "--name",
            "toy-mmdit-esd",
        ]
    )
    with safe_open(str(erased_run / "erased.safetensors"), "pt") as f:
        erased = {name: f.get_tensor(name) for name in f.keys()}
    base = model.network.transformer.state_dict()
    assert any(not torch.equal(tensor, base[name].to(tensor.dtype)) for name, tensor in erased.items())
    # ESD-x on a joint-attention transformer: the text stream's attention projections of both blocks
    # (the last block's text stream ends at its attention: no to_add_out).
    projections = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    assert erased and all(name.split(".attn.")[1].startswith(projections) for name in erased)
    assert {name.split(".attn.")[0] for name in erased} == {"transformer_blocks.0", "transformer_blocks.1"}


def test_esd_joint_overlay_trains_the_pooled_projection_keeps_null_and_preserves(tmp_path):
    """configs/methods/esd_joint.yaml after esd_x.yaml: xattn-pooled, the null term and the preserve
    prompts; the export holds the pooled text projection beside the text stream's projections and
    applies back onto the model it came from."""
    from unlearn.engine.export import apply_erased_weights

    overlay = ROOT / "configs" / "methods" / "esd_joint.yaml"
    common = [*TINY, *QUIET, "model.params.ckpt_path=null", "concept=outlined", "ddim_steps=3", "lr=1e-2"]
    common += ["model.params.trajectory_config.params.pool_size=2", "lightning.trainer.max_steps=2"]
    common += ["lightning.callbacks.toy_benchmark=null", "--logdir", str(tmp_path), "--name", "joint"]
    run = cli.main(["--base", str(MODEL), str(ESD), str(overlay), *common])
    config = OmegaConf.load(next((run / "configs").glob("*-project.yaml")))
    assert config.model.params.objective_config.params.null_weight == 1.0
    assert config.model.params.selector_config.params.train_method == "xattn-pooled"
    with safe_open(str(run / "erased.safetensors"), "pt") as f:
        erased = {name: f.get_tensor(name) for name in f.keys()}
    pooled = {f"time_text_embed.text_embedder.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert pooled <= set(erased) and len(erased) == len(pooled) + 2 * 7  # 2 blocks: 4 + 3 projections, weight + bias
    trained = load_model([MODEL], overrides=[*TINY, "model.params.ckpt_path=null"])
    apply_erased_weights(trained, run / "erased.safetensors")
    state = trained.network.transformer.state_dict()
    assert all(torch.equal(state[name].to(tensor.dtype), tensor) for name, tensor in erased.items())
