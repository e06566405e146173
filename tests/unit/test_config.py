"""Config loading, merging, overrides and instantiation, with their error messages."""

from __future__ import annotations

import textwrap

import pytest
from omegaconf import OmegaConf

from unlearn.config import (
    ConfigError,
    apply_overrides,
    instantiate_from_config,
    load_config,
    load_configs,
    non_negative_number,
    optional_seed,
)


class Leaf:
    def __init__(self, value: int = 0):
        self.value = value


class Composite:
    def __init__(self, child, children=(), named=None, child_config=None, scale: float = 1.0):
        self.child = child
        self.children = list(children)
        self.named = named or {}
        self.child_config = child_config
        self.scale = scale


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_instantiate_builds_nested_blocks_in_dicts_and_lists():
    leaf = {"target": f"{__name__}.Leaf", "params": {"value": 3}}
    cfg = {
        "target": f"{__name__}.Composite",
        "params": {
            "child": leaf,
            "children": [leaf, {"target": f"{__name__}.Leaf"}],
            "named": {"a": leaf, "plain": 5},
            "child_config": leaf,
        },
    }
    obj = instantiate_from_config(cfg, scale=2.5)
    assert isinstance(obj.child, Leaf) and obj.child.value == 3
    assert [c.value for c in obj.children] == [3, 0]
    assert obj.named["a"].value == 3 and obj.named["plain"] == 5
    # *_config keys are handed over unbuilt: the receiver builds them itself.
    assert obj.child_config == leaf
    assert obj.scale == 2.5


def test_missing_target_names_the_path():
    cfg = {"target": f"{__name__}.Composite", "params": {"child_config": None, "child": {"params": {"value": 1}}}}
    with pytest.raises(ConfigError, match=r"model\.params\.child: missing key 'target'"):
        instantiate_from_config(cfg, _path="model")


def test_unknown_module_and_class_name_the_path():
    with pytest.raises(ConfigError, match=r"model\.params\.network_config\.target: no module named 'nope.mod'"):
        instantiate_from_config({"target": "nope.mod.Net"}, _path="model.params.network_config")
    with pytest.raises(ConfigError, match=r"has no attribute 'Leef'; did you mean .*\.Leaf\?"):
        instantiate_from_config({"target": f"{__name__}.Leef"})


def test_wrong_constructor_argument_names_the_block():
    with pytest.raises(ConfigError, match=r"model: cannot build .*Leaf.*unexpected keyword argument 'valeu'"):
        instantiate_from_config({"target": f"{__name__}.Leaf", "params": {"valeu": 1}}, _path="model")


class Engine(Composite):
    def __init__(self, learning_rate: float = 1.0, **kwargs):
        super().__init__(**kwargs)


def test_wrong_constructor_argument_suggests_the_closest_name_up_the_class_tree():
    with pytest.raises(ConfigError, match=r"unexpected keyword argument 'valeu'; did you mean 'value'\?"):
        instantiate_from_config({"target": f"{__name__}.Leaf", "params": {"valeu": 1}})
    # `scael` only reaches Composite through Engine's **kwargs: its name comes from the base.
    with pytest.raises(ConfigError, match=r"'scael'; did you mean 'scale'\?"):
        instantiate_from_config({"target": f"{__name__}.Engine", "params": {"child": None, "scael": 2.0}})
    with pytest.raises(ConfigError, match=r"unexpected keyword argument 'zzz'$"):
        instantiate_from_config({"target": f"{__name__}.Leaf", "params": {"zzz": 1}})


def test_merge_is_left_to_right_then_overrides(tmp_path):
    a = write(
        tmp_path,
        "a.yaml",
        """
        model:
          target: x.Y
          params: {lr: 1.0, depth: 2, keep: a}
        lightning:
          trainer: {max_steps: 10}
    """,
    )
    b = write(
        tmp_path,
        "b.yaml",
        """
        model:
          params: {lr: 2.0, depth: 3}
    """,
    )
    cfg = load_configs([a, b], ["model.params.depth=7", "lightning.trainer.max_steps=2"])
    assert cfg.model.params.lr == 2.0  # b wins over a
    assert cfg.model.params.depth == 7  # the override wins over both
    assert cfg.model.params.keep == "a"
    assert cfg.lightning.trainer.max_steps == 2
    cfg = load_configs([b, a])
    assert cfg.model.params.lr == 1.0


def test_override_of_unknown_key_suggests_the_closest(tmp_path):
    a = write(tmp_path, "a.yaml", "lightning:\n  trainer:\n    max_steps: 10\nmodel:\n  target: x.Y\n")
    with pytest.raises(
        ConfigError,
        match=r"'lightning\.trainer\.max_step' exists in no config file; "
        r"did you mean 'lightning\.trainer\.max_steps'",
    ):
        load_configs([a], ["lightning.trainer.max_step=3"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_configs([a], ["max_steps"])


def test_new_keys_allowed_under_params_and_lightning(tmp_path):
    a = write(tmp_path, "a.yaml", "model:\n  target: x.Y\n  params:\n    lr: 1\nlightning:\n  trainer: {}\n")
    cfg = load_configs([a], ["model.params.dropout=0.1", "lightning.trainer.precision=bf16-mixed", "model.target=z.W"])
    assert cfg.model.params.dropout == 0.1
    assert cfg.lightning.trainer.precision == "bf16-mixed"
    assert cfg.model.target == "z.W"


def test_interpolated_top_level_key_override(tmp_path):
    a = write(tmp_path, "a.yaml", "concept: ???\nmodel:\n  target: x.Y\n  params:\n    concept: ${concept}\n")
    cfg = load_configs([a], ["concept=striped"])
    assert OmegaConf.to_container(cfg, resolve=True)["model"]["params"]["concept"] == "striped"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = write(tmp_path, "bad.yaml", "model:\n  target: x.Y\n  params: [1, 2\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*bad\.yaml:\d+:\d+"):
        load_config(bad)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")


def test_apply_overrides_returns_merged_values():
    cfg = OmegaConf.create({"a": {"b": [1, 2]}})
    cfg = apply_overrides(cfg, ["a.b=[3,4,5]"])
    assert list(cfg.a.b) == [3, 4, 5]


@pytest.mark.parametrize("value, expected", [(0, 0.0), (3, 3.0), (0.25, 0.25)])
def test_non_negative_number_returns_a_float(value, expected):
    out = non_negative_number(value, "model.params.w")
    assert out == expected and type(out) is float


@pytest.mark.parametrize(
    "value, shown", [(-1, "-1"), (-0.5, "-0.5"), (float("nan"), "nan"), ("1", "'1'"), (True, "True"), (None, "None")]
)
def test_non_negative_number_names_the_key_and_value(value, shown):
    with pytest.raises(ValueError, match=rf"^model\.params\.w: expected a number >= 0, got {shown}$"):
        non_negative_number(value, "model.params.w")


def test_optional_seed_passes_integers_and_null_and_names_the_key_otherwise():
    assert optional_seed(0, "model.params.seed") == 0 and optional_seed(None, "model.params.seed") is None
    for bad, shown in [("abc", "'abc'"), (1.5, "1.5"), (-1, "-1"), (True, "True")]:
        with pytest.raises(ValueError, match=rf"^model\.params\.seed: expected an integer >= 0 or null .*got {shown}$"):
            optional_seed(bad, "model.params.seed")
