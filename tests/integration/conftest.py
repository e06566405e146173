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
def tiny_engines(tiny_pipelines):
    """`load_model(configs/models/<arch>.yaml, model_path=<tiny folder>)` for each arch, with
    gradient checkpointing on (a no-op under no_grad). Shared: tests that change one copy it."""
    from tests.integration.tiny_pipelines import IMAGE_SIZE
    from unlearn.engine.loading import load_model

    return {
        arch: load_model([f"configs/models/{arch}.yaml"], overrides=[
            f"model_path={folder}", f"model.params.image_size={IMAGE_SIZE}", "model.params.gradient_checkpointing=true",
        ])
        for arch, folder in tiny_pipelines.items()
    }
