"""ESD, concept ablation, UCE, minimalist masks and DMD2 on the real SD 1.x / SD 2.x / SDXL
architectures (tiny random weights): each runs two steps (UCE its one edit) through main.py, and what
it exports loads back into a plain diffusers pipeline (``from_pretrained``, ``load_state_dict``) with
the engine's outputs exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.integration.tiny_pipelines import IMAGE_SIZE, load_diffusers
from unlearn import cli

ROOT = Path(__file__).resolve().parents[2]
METHODS = ROOT / "configs" / "methods"
ARCHS = ["sd15", "sd21", "sdxl"]
TOL = 1e-6  # the same UNet class, weights and attention processor: equal up to float rounding


pytestmark = pytest.mark.usefixtures("one_thread")


def _model_config(arch: str) -> str:
    return str(ROOT / "configs" / "models" / f"{arch}.yaml")


def _overrides(folder: Path) -> list[str]:
    return [f"model_path={folder}", f"model.params.image_size={IMAGE_SIZE}"]


def _run(arch: str, folder: Path, method: str, logdir: Path, *extra: str) -> Path:
    return cli.main(
        [
            "--base",
            _model_config(arch),
            str(METHODS / f"{method}.yaml"),
            *_overrides(folder),
            "lightning.trainer.max_steps=2",
            *extra,
            "--logdir",
            str(logdir),
            "--name",
            f"{arch}-{method}",
        ]
    )


def _unet_inputs(unet) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Seeded (x, t, cond) for a diffusers UNet config: cond uses the engine's keys."""
    g = torch.Generator().manual_seed(0)
    c = unet.config
    x = torch.randn(2, c.in_channels, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=g)  # (B, 4, 8, 8)
    cond = {"crossattn": torch.randn(2, 77, c.cross_attention_dim, generator=g)}  # (B, L, D)
    if c.addition_embed_type == "text_time":  # SDXL: pooled text (B, P) and time_ids (B, 6)
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        cond["text_embeds"] = torch.randn(2, pooled, generator=g)
        size = [IMAGE_SIZE, IMAGE_SIZE]
        cond["time_ids"] = torch.tensor([size + [0, 0] + size] * 2, dtype=torch.float32)
    return x, torch.tensor([999, 411]), cond


@torch.no_grad()
def _diffusers_out(unet, x, t, cond) -> torch.Tensor:
    added = {k: cond[k] for k in ("text_embeds", "time_ids") if k in cond}
    return unet(x, t, encoder_hidden_states=cond["crossattn"], added_cond_kwargs=added or None, return_dict=False)[0]


@torch.no_grad()
def _network_out(network, x, t, cond) -> torch.Tensor:
    return network(x, t, cond)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("arch", ARCHS)
def test_esd_weights_merge_into_a_diffusers_pipeline(arch, tiny_pipelines, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from unlearn.engine.loading import load_model

    folder = tiny_pipelines[arch]
    run = _run(
        arch,
        folder,
        "esd_x",
        tmp_path,
        "concept=a cat",
        "ddim_steps=3",
        "model.params.trajectory_config.params.pool_size=2",
        "lightning.callbacks.toy_benchmark=null",
        "model.params.export_diffusers=true",
    )
    pipe = load_diffusers(arch, folder)
    x, t, cond = _unet_inputs(pipe.unet)
    original = _diffusers_out(pipe.unet, x, t, cond)

    erased = load_file(str(run / "erased.safetensors"))
    assert erased and all(".attn2." in name for name in erased)
    _, unexpected = pipe.unet.load_state_dict(erased, strict=False)
    assert not unexpected
    merged = _diffusers_out(pipe.unet, x, t, cond)
    engine = load_model([_model_config(arch)], overrides=_overrides(folder), weights=run / "erased.safetensors")
    ours = _network_out(engine.network, x, t, cond)
    assert _max_diff(merged, ours) <= TOL
    assert _max_diff(merged, original) > 1e-6  # two steps changed the UNet

    exported = UNet2DConditionModel.from_pretrained(str(run / "unet"), local_files_only=True)
    assert _max_diff(_diffusers_out(exported, x, t, cond), ours) <= TOL


def _check_kv_export_reloads(arch: str, folder: Path, run: Path) -> None:
    """``erased.safetensors`` holds every cross-attention to_k/to_v, changed; loaded into the plain
    diffusers UNet (``strict=False``) it gives the engine's outputs with the same file applied."""
    from safetensors.torch import load_file

    from unlearn.engine.loading import load_model

    pipe = load_diffusers(arch, folder)
    x, t, cond = _unet_inputs(pipe.unet)
    original = _diffusers_out(pipe.unet, x, t, cond)
    kv = {n for n, _ in pipe.unet.named_parameters() if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
    erased = load_file(str(run / "erased.safetensors"))
    assert set(erased) == kv
    missing, unexpected = pipe.unet.load_state_dict(erased, strict=False)
    assert not unexpected and not set(missing) & kv
    merged = _diffusers_out(pipe.unet, x, t, cond)
    engine = load_model([_model_config(arch)], overrides=_overrides(folder), weights=run / "erased.safetensors")
    assert _max_diff(merged, _network_out(engine.network, x, t, cond)) <= TOL
    assert _max_diff(merged, original) > 1e-6  # the method changed the UNet


@pytest.mark.parametrize("arch", ARCHS)
def test_uce_edit_loads_into_a_diffusers_pipeline(arch, tiny_pipelines, tmp_path):
    folder = tiny_pipelines[arch]
    run = _run(
        arch,
        folder,
        "uce",
        tmp_path,
        "concept=a cat;a red car",
        "separator=;",
        "preserve=a dog",
        "lightning.trainer.max_steps=1",
        "lightning.callbacks.toy_benchmark=null",
    )
    _check_kv_export_reloads(arch, folder, run)


@pytest.mark.parametrize("arch", ARCHS)
def test_concept_ablation_weights_load_into_a_diffusers_pipeline(arch, tiny_pipelines, tmp_path):
    folder = tiny_pipelines[arch]
    run = _run(
        arch,
        folder,
        "ca",
        tmp_path,
        "concept=cat",
        "anchor=dog",
        "template=object",
        "ddim_steps=3",
        "batch_size=1",
        "lr=1e-3",
        "prior_weight=1.0",
        "lightning.callbacks.toy_benchmark=null",
    )
    _check_kv_export_reloads(arch, folder, run)


@pytest.mark.parametrize("arch", ARCHS)
def test_minimalist_masks_apply_to_the_loaded_model(arch, tiny_pipelines, tmp_path):
    from unlearn.engine.loading import load_model

    folder = tiny_pipelines[arch]
    run = _run(
        arch,
        folder,
        "minimalist",
        tmp_path,
        "concept=striped",
        "model.params.trajectory_sampler_config.params.num_steps=2",
        "lightning.callbacks.toy_benchmark=null",
    )
    pipe = load_diffusers(arch, folder)
    x, t, cond = _unet_inputs(pipe.unet)
    original = _diffusers_out(pipe.unet, x, t, cond)

    engine = load_model([_model_config(arch)], overrides=_overrides(folder), masks=run / "masks.safetensors")
    masked = _network_out(engine.network, x, t, cond)
    assert torch.isfinite(masked).all() and _max_diff(masked, original) > 1e-4
    engine.applied_masks.remove()  # the hooks come off: the plain diffusers UNet again, exactly
    assert _max_diff(_network_out(engine.network, x, t, cond), original) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_dmd2_student_loads_into_a_diffusers_unet(arch, tiny_pipelines, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from unlearn.engine.loading import load_model

    folder = tiny_pipelines[arch]
    run = _run(
        arch,
        folder,
        "dmd2",
        tmp_path,
        "model.params.dfake_gen_update_ratio=2",
        "model.params.batch_size=1",
        "model.params.scheduler_config.params.warmup_steps=0",
        "model.params.prompts_config.params.prompts=[a cat, a red car]",
    )
    pipe = load_diffusers(arch, folder)
    x, t, cond = _unet_inputs(pipe.unet)
    teacher = _diffusers_out(pipe.unet, x, t, cond)

    with safe_open(str(run / "student.safetensors"), framework="pt") as f:
        assert f.metadata()["generator_updates"] == "1"  # iteration 0 of 2 with ratio 2
    pipe.unet.load_state_dict(load_file(str(run / "student.safetensors")), strict=True)
    student = _diffusers_out(pipe.unet, x, t, cond)
    engine = load_model(run=run)
    ours = _network_out(engine.generator, x, t, cond)
    assert _max_diff(student, ours) <= TOL
    assert _max_diff(student, teacher) > 1e-6
