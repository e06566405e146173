"""fp16 / bf16 training steps with gradient checkpointing on CUDA, for SD 1.x, SD 2.x and SDXL
(tiny random weights of the real architectures). Run with ``python -m pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from tests.integration.tiny_pipelines import BUILDERS, IMAGE_SIZE
from unlearn.engine.loading import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# The denoising loss of a v-prediction model (SD 2.x 768-v) weighs its samples as v-prediction does.
V_LOSS = "model.params.loss_fn_config.params.loss_weighting_config.target=unlearn.diffusion.loss_weighting.VWeighting"


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true"])
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_training_step_and_sampling_on_cuda(arch, precision, tmp_path):
    folder = BUILDERS[arch](tmp_path / arch, tmp_path / "tokenizer_cache")
    # the model config and the denoising training recipe (model configs describe the model only)
    model = load_model(
        [f"configs/models/{arch}.yaml", "configs/trainer/denoising.yaml"],
        overrides=[
            f"model_path={folder}",
            f"model.params.image_size={IMAGE_SIZE}",
            "model.params.gradient_checkpointing=true",
            *([V_LOSS] if arch == "sd21" else []),
        ],
    ).cuda()
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    autocast = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    batch = {"jpg": torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, device="cuda") * 2 - 1, "txt": ["a cat", "a car"]}
    if arch == "sdxl":
        size = torch.full((2, 2), float(IMAGE_SIZE), device="cuda")
        batch.update(
            original_size_as_tuple=size, crop_coords_top_left=torch.zeros_like(size), target_size_as_tuple=size
        )
    model.train()
    with torch.autocast("cuda", dtype=autocast or torch.float32, enabled=autocast is not None):
        loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.network.parameters() if p.grad is not None)
    with torch.autocast("cuda", dtype=autocast or torch.float32, enabled=autocast is not None):
        images = model.generate(["a cat"], seeds=[0], num_steps=3, guidance_scale=5.0)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
