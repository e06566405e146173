"""The ESD method configs: toolkit keys at the top level, composed onto any model config."""

from pathlib import Path

import pytest
import yaml

from unlearn.config import ConfigError, load_configs

ROOT = Path(__file__).resolve().parents[2]
METHODS = ROOT / "configs" / "methods"
SMOKE = ROOT / "configs" / "toy" / "smoke.yaml"


def _body(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("train_method")
    return cfg


def test_method_configs_differ_only_in_train_method():
    files = {p.name: p for p in METHODS.glob("esd_*.yaml")}
    assert {"esd_x.yaml", "esd_u.yaml", "esd_x_strict.yaml"} <= set(files)
    methods = {name: yaml.safe_load(p.read_text())["train_method"] for name, p in files.items()}
    assert methods["esd_x.yaml"] == "xattn" and methods["esd_u.yaml"] == "noxattn"
    assert methods["esd_x_strict.yaml"] == "esd-x-strict"
    bodies = [_body(p) for p in files.values()]
    assert all(b == bodies[0] for b in bodies)


def test_toolkit_keys_reach_the_engine():
    cfg = load_configs([SMOKE, METHODS / "esd_x.yaml"],
                       ["concept=striped;dotted", "separator=;", "iterations=7", "lr=1e-4", "negative_guidance=2"])
    params = cfg.model.params
    assert cfg.model.target == "unlearn.engine.esd.ESDEngine"
    assert params.concept == "striped;dotted" and params.separator == ";"
    assert params.base_learning_rate == 1e-4 and params.negative_guidance == 2
    assert cfg.lightning.trainer.max_steps == 7 and cfg.data is None
    assert params.network_config.params.config.cross_attention_dim == 32  # the model config is kept


def test_missing_concept_is_a_config_error():
    with pytest.raises(ConfigError, match=r"missing mandatory value\(s\) \['concept'\].*concept=\.\.\."):
        load_configs([SMOKE, METHODS / "esd_x.yaml"])
