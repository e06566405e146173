"""The ESD method configs: toolkit keys at the top level, composed onto any model config."""

from pathlib import Path

import pytest

from unlearn.config import ConfigError, instantiate_from_config, load_configs
from unlearn.selection import select_parameters

ROOT = Path(__file__).resolve().parents[2]
METHODS = ROOT / "configs" / "methods"
SMOKE = ROOT / "configs" / "toy" / "smoke.yaml"


@pytest.mark.parametrize(
    "override, method",
    [
        ([], "xattn"),
        (["train_method=noxattn"], "noxattn"),  # ESD-u
        (["train_method=esd-u"], "noxattn"),
        (["train_method=esd-x-strict"], "esd-x-strict"),
    ],
)
def test_one_config_for_every_train_method(override, method):
    cfg = load_configs(
        [SMOKE, METHODS / "esd_x.yaml"], ["concept=striped", "model.params.loss_fn_config=null", *override]
    )
    engine = instantiate_from_config(cfg.model, _path="model")
    assert engine.selector.name == method
    assert engine.selected == select_parameters(engine.network.unet, method)
    if method == "noxattn":
        assert not any(".attn2." in n or n.startswith(("time_embedding.", "conv_out.")) for n in engine.selected)
        assert any(".attn1." in n for n in engine.selected)
    elif method == "esd-x-strict":
        assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in engine.selected)
    else:
        assert len(engine.selected) == 20 and all(".attn2." in n for n in engine.selected)


def test_toolkit_keys_reach_the_engine():
    cfg = load_configs(
        [SMOKE, METHODS / "esd_x.yaml"],
        ["concept=striped;dotted", "separator=;", "iterations=7", "lr=1e-4", "negative_guidance=2", "null_weight=1"],
    )
    params = cfg.model.params
    assert cfg.model.target == "unlearn.engine.finetune.FineTuneEngine"
    assert params.concept == "striped;dotted" and params.separator == ";"
    assert params.base_learning_rate == 1e-4 and params.objective_config.params.negative_guidance == 2
    assert params.objective_config.params.null_weight == 1
    assert cfg.lightning.trainer.max_steps == 7 and cfg.data is None
    assert params.network_config.params.config.cross_attention_dim == 32  # the model config is kept


def test_missing_concept_is_a_config_error():
    with pytest.raises(ConfigError, match=r"missing mandatory value\(s\) \['concept'\].*concept=\.\.\."):
        load_configs([SMOKE, METHODS / "esd_x.yaml"])
