import pytest

SMOKE = "configs/toy/smoke.yaml"


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "logs"
