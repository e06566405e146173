"""ESD, minimalist masks and DMD2 on the joint-attention transformers (SD3's MMDiT, Flux.1-dev; tiny
random weights), each for two steps through main.py: ESD trains the text stream's attention
projections on x_t from the flow's own sampler, masks learn heads and channels, DMD2 distils a
few-step generator with a velocity critic; what each exports loads back into the plain diffusers
transformer (or onto the model) with the engine's outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.integration.tiny_pipelines import IMAGE_SIZE, load_diffusers
from unlearn import cli

ROOT = Path(__file__).resolve().parents[2]
METHODS = ROOT / "configs" / "methods"
TOL = 1e-6  # the same transformer class and weights: equal up to float rounding

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["sd3", "flux"])
def arch_folder(request, tiny_sd3_pipeline, tiny_flux_pipeline):
    return request.param, tiny_sd3_pipeline if request.param == "sd3" else tiny_flux_pipeline


def _overrides(folder: Path) -> list[str]:
    return [f"model_path={folder}", f"model.params.image_size={IMAGE_SIZE}"]


def _inputs(engine) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Seeded (x, t, cond) in the engine's own terms: latents, timesteps 1000 sigma, real prompt embeddings."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *engine.latent_shape, generator=g)
    with torch.no_grad():
        cond = engine.conditioning_for(["a cat", "a red car"])
    return x, torch.tensor([900.0, 310.0]), cond


@pytest.mark.parametrize("train_method, reuse", [("xattn", 1), ("esd-x-strict", 2)])
def test_esd_trains_the_text_stream_and_its_export_reloads_into_diffusers(arch_folder, train_method, reuse, tmp_path):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from safetensors.torch import load_file

    from unlearn.engine.loading import load_model

    arch, folder = arch_folder
    model_config = str(ROOT / "configs" / "models" / f"{arch}.yaml")
    run = cli.main(
        [
            "--base",
            model_config,
            str(ROOT / "configs" / "methods" / "esd_x.yaml"),
            *_overrides(folder),
            "concept=a cat",
            f"train_method={train_method}",
            f"reuse={reuse}",  # 2: the loss takes the frozen predictions recorded along the flow's trajectories
            "ddim_steps=3",
            "lr=1e-2",
            "model.params.trajectory_config.params.pool_size=2",
            "lightning.trainer.max_steps=2",
            "lightning.callbacks.toy_benchmark=null",
            "model.params.export_diffusers=true",
            "--logdir",
            str(tmp_path),
            "--name",
            f"{arch}-esd",
        ]
    )
    erased = load_file(str(run / "erased.safetensors"))
    projections = ("add_k_proj", "add_v_proj") if train_method == "esd-x-strict" else ("add_", "to_add_out")
    assert erased and all(n.split(".attn.")[1].startswith(projections) for n in erased)

    pipe = load_diffusers(arch, folder)
    plain = load_model([model_config], overrides=_overrides(folder))
    x, t, cond = _inputs(plain)
    with torch.no_grad():
        original = plain.network(x, t, cond)
        missing, unexpected = pipe.transformer.load_state_dict(erased, strict=False)
        assert not unexpected and not set(missing) & set(erased)
        plain.network.transformer = pipe.transformer  # diffusers' own module, with the file merged
        merged = plain.network(x, t, cond)
        engine = load_model([model_config], overrides=_overrides(folder), weights=run / "erased.safetensors")
        ours = engine.network(x, t, cond)
        cls = SD3Transformer2DModel if arch == "sd3" else FluxTransformer2DModel
        plain.network.transformer = cls.from_pretrained(str(run / "transformer"), local_files_only=True)
        exported = plain.network(x, t, cond)
    assert (merged - ours).abs().max().item() <= TOL
    assert (exported - ours).abs().max().item() <= TOL
    assert (merged - original).abs().max().item() > 1e-6  # two steps changed the transformer


def test_on_a_guidance_distilled_flux_the_loss_reads_guidance_1_and_x_t_the_models_own(
    tiny_flux_pipeline, tiny_sd3_pipeline
):
    from unlearn.config import ConfigError
    from unlearn.engine.loading import load_model

    configs = [str(ROOT / "configs" / "models" / "flux.yaml"), str(ROOT / "configs" / "methods" / "esd_x.yaml")]
    distilled = str(ROOT / "configs" / "methods" / "esd_guidance_distilled.yaml")
    settings = [*_overrides(tiny_flux_pipeline), "concept=a cat", "ddim_steps=3", "reuse=2"]
    engine = load_model([*configs, distilled], overrides=settings)
    assert engine.loss_guidance == 1.0 and engine.network.guidance == 3.5
    assert engine.pool.sampler.guider.branches() == ("cond",)  # x_t: no CFG, the embedded 3.5
    assert engine.pool.reuse == 2 and not engine.pool.record_predictions  # nothing recorded to throw away
    batch, _ = engine.erasure_batch()
    assert batch.teacher_eps is None  # the sampler's predictions are at 3.5, not the loss's 1
    for role in (batch.concept, batch.null):
        assert torch.equal(role["guidance"], torch.ones(1))
    with torch.no_grad():
        at_1 = engine.teacher_eps(batch.x, batch.sigma, batch.concept)
        at_sampling = engine.teacher_eps(
            batch.x, batch.sigma, {k: v for k, v in batch.concept.items() if k != "guidance"}
        )
    assert (at_1 - at_sampling).abs().max() > 1e-6  # the strength reaches the transformer

    with pytest.raises(ConfigError, match=r"model\.params\.loss_guidance: the network reads no guidance strength"):
        load_model(
            [str(ROOT / "configs" / "models" / "sd3.yaml"), configs[1], distilled],
            overrides=[*_overrides(tiny_sd3_pipeline), "concept=a cat"],
        )


# ------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize(
    "arch, overlay, groups",
    [
        ("sd3", "minimalist_transformer.yaml", {"attn", "ff", "norm"}),
        ("flux", "minimalist_transformer.yaml", {"attn", "ff", "norm"}),
        ("flux", "minimalist_flux.yaml", {"ff", "norm"}),
    ],
)
def test_masks_train_on_a_transformer_and_load_back(
    arch, overlay, groups, tiny_sd3_pipeline, tiny_flux_pipeline, tmp_path
):
    from safetensors import safe_open

    from unlearn.engine.loading import load_model

    folder = tiny_sd3_pipeline if arch == "sd3" else tiny_flux_pipeline
    model_config = str(ROOT / "configs" / "models" / f"{arch}.yaml")
    overrides = [f"model_path={folder}", f"model.params.image_size={IMAGE_SIZE}"]
    run = cli.main(
        [
            "--base",
            model_config,
            str(METHODS / "minimalist.yaml"),
            str(METHODS / overlay),
            *overrides,
            "concept=striped",
            "lightning.trainer.max_steps=2",
            "model.params.trajectory_sampler_config.params.num_steps=2",
            "lightning.callbacks.toy_benchmark=null",
            "--logdir",
            str(tmp_path),
        ]
    )
    with safe_open(str(run / "masks.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert {k.split(":", 1)[0] for k in keys} == groups
    assert all(":transformer." in k for k in keys)

    engine = load_model([model_config], overrides=overrides, masks=run / "masks.safetensors")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *engine.latent_shape, generator=g)
    t = torch.tensor([900.0, 300.0])
    with torch.no_grad():
        cond = engine.conditioning_for(["a striped circle", "a dotted square"])
        masked = engine.network(x, t, cond)
        engine.applied_masks.remove()
        original = engine.network(x, t, cond)
    assert torch.isfinite(masked).all() and (masked - original).abs().max() > 1e-4  # some units are off


# ------------------------------------------------------------------------------------- DMD2
GAN = (  # the GAN head on the critic's middle block, real images from the toy canvas
    "model.params.objective_config.params.gan_classifier=true",
    "model.params.real_data_config={target: unlearn.data.canvas_datamodule.CanvasDataset, "
    f"params: {{length: 4, image_size: {IMAGE_SIZE}}}}}",
    "lightning.trainer.log_every_n_steps=1",
)


@pytest.mark.parametrize("gan_classifier", [False, True])
def test_dmd2_student_loads_into_the_diffusers_transformer(arch_folder, gan_classifier, tmp_path):
    import csv

    from safetensors.torch import load_file

    from unlearn.engine.loading import load_model

    arch, folder = arch_folder
    model_config = str(ROOT / "configs" / "models" / f"{arch}.yaml")
    run = cli.main(
        [
            "--base",
            model_config,
            str(METHODS / "dmd2.yaml"),
            *_overrides(folder),
            "lightning.trainer.max_steps=2",
            "model.params.dfake_gen_update_ratio=2",
            "model.params.batch_size=1",
            "model.params.scheduler_config.params.warmup_steps=0",
            "model.params.prompts_config.params.prompts=[a cat, a red car]",
            *(GAN if gan_classifier else ()),
            "--logdir",
            str(tmp_path),
        ]
    )
    if gan_classifier:
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        width = state["objective.cls_head.0.weight"].shape[0]
        assert width == (16 if arch == "sd3" else 32)  # the transformer's width: heads x head dim
        with open(next(run.glob("csv/*/metrics.csv"))) as f:
            rows = list(csv.DictReader(f))
        for term in ("train/loss_gan_g", "train/loss_gan_d"):  # the generator's at step 0, the critic's at both
            values = [float(r[term]) for r in rows if r.get(term)]
            assert values and all(math.isfinite(v) and v > 0.1 for v in values), (term, values)
    engine = load_model(run=run)
    sigmas = engine.student_sampler.get_sigmas()
    assert sigmas[0] == 1.0 and sigmas[-1] == 0  # t = 999 is the flow's pure noise
    pipe = load_diffusers(arch, folder)
    plain = load_model([model_config], overrides=_overrides(folder))
    x, t, cond = _inputs(plain)
    with torch.no_grad():
        teacher = plain.network(x, t, cond)
        pipe.transformer.load_state_dict(load_file(str(run / "student.safetensors")), strict=True)
        plain.network.transformer = pipe.transformer
        student = plain.network(x, t, cond)
        ours = engine.generator(x, t, cond)
    assert (student - ours).abs().max().item() <= TOL
    assert (student - teacher).abs().max().item() > 1e-6
