"""Config loading, merging and instantiation in the style of Stability AI's `sgm`.

A component is described by a block ``{"target": "pkg.module.Class", "params": {...}}``.
`instantiate_from_config` imports ``target`` and calls it with ``params``; blocks nested
anywhere inside ``params`` (in dicts or lists) are built first, so composites receive
built objects. Keys that end in ``_config`` (and sgm's ``emb_models``) are left as
configs: by sgm convention the receiving class builds them itself (it may need runtime
arguments to do so).

Several YAML files are merged left to right (later wins) and ``key=value`` dot-list
overrides are applied last. Every error names the file, the config path or the key.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "ConfigError",
    "get_obj_from_str",
    "instantiate_from_config",
    "load_config",
    "load_configs",
    "apply_overrides",
    "config_keys",
    "check_missing",
    "non_negative_number",
]

# Keys whose value is a config the receiving class builds itself (sgm convention): the
# `*_config` blocks, and sgm's `emb_models` list, whose entries carry conditioner-level
# keys (input_key, ucg_rate, ...) beside target/params.
_DEFERRED_SUFFIXES = ("_config", "_configs")
_DEFERRED_KEYS = frozenset({"emb_models"})


def _deferred(key: Any) -> bool:
    key = str(key)
    return key in _DEFERRED_KEYS or key.endswith(_DEFERRED_SUFFIXES)


class ConfigError(ValueError):
    """A config is malformed; the message names the file, path or key at fault."""


def get_obj_from_str(target: str, path: str = "target") -> Any:
    """Import ``"pkg.module.Name"`` and return ``Name``; errors name the config path."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{path}: expected a dotted import path like 'pkg.module.Class', got {target!r}")
    module_name, attr = target.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only translate the error when the target module itself is missing; an import
        # error raised from inside an existing module is a real bug and must surface.
        if err.name and module_name.startswith(err.name):
            raise ConfigError(f"{path}: no module named {module_name!r} (target {target!r})") from err
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        candidates = [n for n in dir(module) if not n.startswith("_")]
        hint = difflib.get_close_matches(attr, candidates, n=1)
        suggestion = f"; did you mean {module_name}.{hint[0]}?" if hint else ""
        raise ConfigError(f"{path}: module {module_name!r} has no attribute {attr!r}{suggestion}") from None


def _is_target_block(value: Any) -> bool:
    return isinstance(value, Mapping) and "target" in value


def _to_container(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _build_nested(value: Any, path: str) -> Any:
    """Build target blocks nested in ``value``; leave everything else as it is."""
    if _is_target_block(value) or (isinstance(value, Mapping) and set(value) == {"params"}):
        # A lone `params:` is a block whose `target:` was forgotten, not a plain dict.
        return instantiate_from_config(value, _path=path)
    if isinstance(value, Mapping):
        return {k: (v if _deferred(k) else _build_nested(v, f"{path}.{k}")) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_build_nested(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def instantiate_from_config(config: Any, _path: str = "config", **runtime_kwargs: Any) -> Any:
    """Build ``config["target"](**config["params"], **runtime_kwargs)``.

    Nested target blocks in ``params`` are built first (recursively); keys ending in
    ``_config`` are passed through unbuilt. ``runtime_kwargs`` win over ``params``. A
    ValueError of the constructor whose message starts with one of ``params``' keys
    (``"weight: expected ..."``) comes out as a ConfigError naming the full key.
    """
    config = _to_container(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"{_path}: expected a mapping with 'target' and 'params', got {type(config).__name__}")
    if "target" not in config:
        if config == "__is_first_stage__" or config == "__is_unconditional__":
            return None
        keys = ", ".join(map(str, config.keys())) or "nothing"
        raise ConfigError(f"{_path}: missing key 'target' (the block has: {keys})")
    unknown = set(config) - {"target", "params"}
    if unknown:
        raise ConfigError(
            f"{_path}: unexpected key(s) {sorted(unknown)} beside 'target'; constructor arguments go under 'params'"
        )
    cls = get_obj_from_str(config["target"], f"{_path}.target")
    params = config.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{_path}.params: expected a mapping, got {type(params).__name__}")
    kwargs = _build_nested(dict(params), f"{_path}.params")
    kwargs.update(runtime_kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        # A wrong argument name is the most common config mistake: say where it came from.
        if "argument" in str(err) and cls.__name__ in str(err) or "__init__()" in str(err):
            hint = _closest_argument(cls, str(err))
            raise ConfigError(f"{_path}: cannot build {config['target']}: {err}{hint}") from err
        raise
    except ValueError as err:
        # Components name the argument at fault ("preserve_weight: expected ..."); give its full key.
        name = str(err).split(":", 1)[0]
        if ":" in str(err) and name in params and not isinstance(err, ConfigError):
            raise ConfigError(f"{_path}.params.{err}") from err
        raise


def _closest_argument(cls: Any, message: str) -> str:
    """``"; did you mean 'x'?"`` for an unexpected keyword argument, from the signatures.

    Engines pass ``**kwargs`` up to their base class, so the names of every ``__init__``
    in the MRO are candidates, not only the class's own.
    """
    import inspect
    import re

    found = re.search(r"unexpected keyword argument '(\w+)'", message)
    if not found:
        return ""
    names: set[str] = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        try:
            parameters = inspect.signature(klass.__init__ if isinstance(klass, type) else klass).parameters
        except (TypeError, ValueError):
            continue
        names.update(n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    names.discard("self")
    close = difflib.get_close_matches(found.group(1), sorted(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_config(path: str | Path) -> DictConfig:
    """Load one YAML file; syntax errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"YAML syntax error in {where}: {problem}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return OmegaConf.create(data)


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """All dotted key paths in ``cfg`` (dict keys only; list items as ``key.0``)."""
    keys: list[str] = []
    if isinstance(cfg, (DictConfig, Mapping)):
        items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else cfg.items()
        for k, v in items:
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            keys.extend(config_keys(v, full))
    elif isinstance(cfg, (ListConfig, list)):
        for i, v in enumerate(cfg):
            full = f"{prefix}.{i}"
            keys.append(full)
            keys.extend(config_keys(v, full))
    return keys


def _key_exists(cfg: DictConfig, dotted: str) -> bool:
    # `in` is False for mandatory `???` values, so walk the nodes instead.
    node: Any = cfg
    for part in dotted.split("."):
        if isinstance(node, DictConfig):
            node = node._get_node(part) if part in node.keys() else None
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
        if node is None:
            return False
    return True


def _parent_accepts_new_keys(cfg: DictConfig, dotted: str) -> bool:
    """New keys are fine inside ``params`` blocks and top-level free sections.

    Constructor arguments with defaults rarely appear in YAML, so an override such as
    ``model.params.network_config.params.dropout=0.1`` must be allowed even when the file
    does not spell that key out. Outside a ``params`` block a new key is almost always a
    typo, and we say so.
    """
    parts = dotted.split(".")
    if len(parts) == 1:
        return False
    parent = parts[:-1]
    if parent == ["lightning", "trainer"]:
        return parts[-1] in _trainer_arguments()
    if "params" in parent or parent[0] == "lightning":
        return _key_exists(cfg, ".".join(parent)) or parent[-1] == "params"
    return False


def _trainer_arguments() -> set[str]:
    import inspect

    from lightning.pytorch import Trainer

    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``key=value`` dot-list overrides; an unknown key gets the closest existing one."""
    known = config_keys(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (for example lightning.trainer.max_steps=2)")
        key = item.split("=", 1)[0].strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        if not _key_exists(cfg, key) and not _parent_accepts_new_keys(cfg, key):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"override {item!r}: the key {key!r} exists in no config file{hint}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except Exception as err:  # omegaconf raises several types; say which override failed
            raise ConfigError(f"override {item!r}: {err}") from err
    return cfg


def load_configs(paths: Iterable[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge YAML files left to right (later wins), then apply dot-list overrides."""
    configs = [load_config(p) for p in paths]
    merged = OmegaConf.merge(*configs) if configs else OmegaConf.create({})
    merged = apply_overrides(merged, overrides)
    check_missing(merged)
    return merged


def check_missing(cfg: DictConfig) -> None:
    """Mandatory ``???`` values left unset are a ConfigError naming the key(s) to set.

    Only literal ``???`` values are named (not the interpolations that point at them), so
    a method config's ``concept: ???`` reads "set concept=...", not a resolver traceback.
    """
    literal = []
    for key in sorted(OmegaConf.missing_keys(cfg)):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else cfg
        child = node._get_node(int(leaf) if isinstance(node, ListConfig) else leaf) if node is not None else None
        if child is not None and not child._is_interpolation():
            literal.append(key)
    if literal:
        examples = " ".join(f"{k}=..." for k in literal)
        raise ConfigError(f"missing mandatory value(s) {literal}: set them on the command line, e.g. {examples}")


def non_negative_number(value: Any, key: str) -> float:
    """``value`` as a float, or a ValueError naming ``key``. Booleans and numeric strings are
    refused: a YAML ``yes`` or a quoted ``"1"`` is a typo, not a weight."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{key}: expected a number >= 0, got {value!r}")
    return float(value)


def optional_seed(value: Any, key: str) -> int | None:
    """``value`` as a seed (an integer >= 0) or None, else a ValueError naming ``key``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: expected an integer >= 0 or null (main.py's --seed), got {value!r}")
    return value
