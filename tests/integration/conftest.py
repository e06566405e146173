import pytest

SMOKE = "configs/toy/smoke.yaml"


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "logs"


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory):
    """Tiny random SD 1.x / SD 2.x / SDXL pipelines saved with save_pretrained: {arch: folder}."""
    from tests.integration.tiny_pipelines import BUILDERS

    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {arch: build(root / arch, root / "tokenizer_cache") for arch, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def tiny_sd3_pipeline(tmp_path_factory):
    """A tiny random SD3 pipeline (MMDiT, CLIP-L/G + T5, 16-channel VAE) saved with save_pretrained."""
    from tests.integration.tiny_pipelines import build_sd3

    root = tmp_path_factory.mktemp("tiny_sd3")
    return build_sd3(root / "sd3", root / "tokenizer_cache")


@pytest.fixture(scope="session")
def tiny_flux_pipeline(tmp_path_factory):
    """A tiny random Flux.1-dev pipeline (guidance embedding, RoPE, CLIP-L pooled + T5) saved with save_pretrained."""
    from tests.integration.tiny_pipelines import build_flux

    root = tmp_path_factory.mktemp("tiny_flux")
    return build_flux(root / "flux", root / "tokenizer_cache")


@pytest.fixture(scope="session")
def tiny_flux_schnell_pipeline(tmp_path_factory):
    """`tiny_flux_pipeline` as Flux.1-schnell: no guidance embedding, static schedule."""
    from tests.integration.tiny_pipelines import build_flux

    root = tmp_path_factory.mktemp("tiny_flux_schnell")
    return build_flux(root / "flux_schnell", root / "tokenizer_cache", schnell=True)


@pytest.fixture(scope="session")
def tiny_engines(tiny_pipelines):
    """`load_model(configs/models/<arch>.yaml, model_path=<tiny folder>)` for each arch, with
    gradient checkpointing on (a no-op under no_grad). Shared: tests that change one copy it."""
    from tests.integration.tiny_pipelines import IMAGE_SIZE
    from unlearn.engine.loading import load_model

    return {
        arch: load_model(
            [f"configs/models/{arch}.yaml"],
            overrides=[
                f"model_path={folder}",
                f"model.params.image_size={IMAGE_SIZE}",
                "model.params.gradient_checkpointing=true",
            ],
        )
        for arch, folder in tiny_pipelines.items()
    }


# The denoising loss of a v-prediction model (SD 2.x 768-v) weighs its samples as v-prediction does.
V_LOSS = "model.params.loss_fn_config.params.loss_weighting_config.target=unlearn.diffusion.loss_weighting.VWeighting"


@pytest.fixture(scope="session")
def tiny_trainable_engines(tiny_pipelines):
    """`tiny_engines` with the denoising training recipe (``configs/trainer/denoising.yaml``), for the
    tests that call ``training_step``: the model configs describe the model only. Shared: tests that
    change one copy it."""
    from tests.integration.tiny_pipelines import IMAGE_SIZE
    from unlearn.engine.loading import load_model

    return {
        arch: load_model(
            [f"configs/models/{arch}.yaml", "configs/trainer/denoising.yaml"],
            overrides=[
                f"model_path={folder}",
                f"model.params.image_size={IMAGE_SIZE}",
                "model.params.gradient_checkpointing=true",
                *([V_LOSS] if arch == "sd21" else []),
            ],
        )
        for arch, folder in tiny_pipelines.items()
    }
