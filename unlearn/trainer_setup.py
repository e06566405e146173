"""The ``lightning`` section of a run's config, checked and built: Trainer, checkpoints, callbacks, logger.

`main.py` builds all of it before the run directory exists, so a bad value is a `ConfigError`
naming its key (``lightning.trainer.max_steps``, and the top-level key it was interpolated
from, e.g. ``${iterations}``) and nothing is written. Lightning itself checks some values
late (at ``fit``) or with messages that name no key; the checks here come first.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from unlearn.config import ConfigError, instantiate_from_config

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CALLBACKS", "build_trainer", "check_lightning_config", "source_of", "with_defaults", "with_source"]

# Integer arguments: the smallest value allowed and whether null (None) is.
_TRAINER_INTS = {
    "max_steps": (-1, False),
    "max_epochs": (-1, True),
    "min_steps": (0, True),
    "min_epochs": (0, True),
    "log_every_n_steps": (0, True),
    "accumulate_grad_batches": (1, False),
    "check_val_every_n_epoch": (1, True),
    "num_sanity_val_steps": (-1, True),
}
_CHECKPOINT_INTS = {"every_n_train_steps": (0, True), "every_n_epochs": (0, True), "save_top_k": (-1, False)}
# Callbacks every run gets; `lightning.callbacks.<name>` in a config or an override sets their params
# (lightning.callbacks.non_finite.params.policy=skip) or switches one off (lightning.callbacks={non_finite: null}).
DEFAULT_CALLBACKS = {
    "non_finite": {"target": "unlearn.callbacks.NonFiniteLoss", "params": {"policy": "stop"}},
    "resources": {"target": "unlearn.callbacks.ResourceUsage"},
}


def with_defaults(config: DictConfig) -> DictConfig:
    """``config`` merged over `DEFAULT_CALLBACKS`, so the saved config records them and their params."""
    return OmegaConf.merge({"lightning": {"callbacks": DEFAULT_CALLBACKS}}, config)


def source_of(config: DictConfig, key: str) -> str | None:
    """``"${iterations}"`` when the value at ``key`` is an interpolation, else None."""
    parent, _, leaf = key.rpartition(".")
    try:
        node = OmegaConf.select(config, parent, throw_on_missing=False) if parent else config
        child = node._get_node(leaf) if isinstance(node, DictConfig) and leaf in node else None
    except Exception:  # a malformed path or a node type without _get_node: no hint
        return None
    return str(child._value()) if child is not None and child._is_interpolation() else None


def with_source(config: DictConfig, message: str) -> str:
    """``message`` with ``(from ${lr})`` after its leading ``key:`` when that key's value is an interpolation."""
    key, sep, rest = message.partition(":")
    if not sep or " " in key:
        return message
    source = source_of(config, key)
    return f"{key} (from {source}):{rest}" if source else message


def _check_int(value: Any, key: str, minimum: int, nullable: bool) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        null = " or null" if nullable else ""
        raise ConfigError(f"{key}: expected an integer >= {minimum}{null}, got {value!r}")


def _check_accelerator(value: Any) -> None:
    if not isinstance(value, str) or value == "auto":
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = sorted(AcceleratorRegistry.available_accelerators())
    available = [n for n in names if AcceleratorRegistry[n]["accelerator"].is_available()]
    wanted = ["cuda", "mps"] if value == "gpu" else [value]
    if value != "gpu" and value not in names:
        raise ConfigError(
            f"lightning.trainer.accelerator: unknown accelerator {value!r}; expected auto, gpu or one of {names}"
        )
    if not set(wanted) & set(available):
        raise ConfigError(
            f"lightning.trainer.accelerator: {value!r} is not available on this machine "
            f"(available: {', '.join(available)}); use accelerator=auto or cpu"
        )


def check_lightning_config(config: DictConfig) -> None:
    """Type checks of the Trainer and ModelCheckpoint values Lightning checks late or without
    naming the key; a ConfigError names the key (and its ``${...}`` source)."""
    lightning_cfg = config.get("lightning") or {}
    trainer = lightning_cfg.get("trainer") or {}
    checks = [(f"lightning.trainer.{k}", trainer.get(k), *spec) for k, spec in _TRAINER_INTS.items() if k in trainer]
    ckpt = (lightning_cfg.get("modelcheckpoint") or {}).get("params") or {}
    checks += [
        (f"lightning.modelcheckpoint.params.{k}", ckpt.get(k), *spec)
        for k, spec in _CHECKPOINT_INTS.items()
        if k in ckpt
    ]
    for key, value, minimum, nullable in checks:
        try:
            _check_int(value, key, minimum, nullable)
        except ConfigError as err:
            raise ConfigError(with_source(config, str(err))) from None
    _check_accelerator(trainer.get("accelerator"))


def _build(cls: type, params: Mapping[str, Any], path: str) -> Any:
    """``cls(**params)``; a wrong argument name or value is a ConfigError naming ``path``."""
    try:
        return cls(**params)
    except TypeError as err:
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        bad = [k for k in params if k not in names]
        if bad:
            close = difflib.get_close_matches(bad[0], names, n=1)
            hint = f"; did you mean {path}.{close[0]}?" if close else f" (arguments: {', '.join(names)})"
            raise ConfigError(f"{path}.{bad[0]}: {cls.__name__} has no argument {bad[0]!r}{hint}") from None
        raise ConfigError(f"{path}: {err}") from None
    except (ValueError, ImportError) as err:  # Lightning's MisconfigurationException is an Exception
        raise ConfigError(f"{path}: {err}") from None
    except Exception as err:
        if type(err).__name__ == "MisconfigurationException":
            raise ConfigError(f"{path}: {err}") from None
        raise


def build_callbacks(lightning_cfg: Mapping[str, Any], ckpt_dir: Path) -> list:
    """ModelCheckpoint (``lightning.modelcheckpoint.params``), ``last.ckpt`` on exception and at
    the end, the default callbacks and ``lightning.callbacks`` (``name: null`` switches one off)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from unlearn.callbacks import CheckpointAtTrainEnd, CheckpointOnException

    ckpt_params = {
        "dirpath": str(ckpt_dir),
        "filename": "{epoch:06}-{step:09}",
        "save_last": True,
        "every_n_train_steps": None,
        "save_top_k": -1,
        # Resuming must overwrite last.ckpt, not add last-v1.ckpt beside it.
        "enable_version_counter": False,
    }
    ckpt_params.update(dict((lightning_cfg.get("modelcheckpoint") or {}).get("params") or {}))
    callbacks = [
        _build(ModelCheckpoint, ckpt_params, "lightning.modelcheckpoint.params"),
        CheckpointOnException(ckpt_dir),
        CheckpointAtTrainEnd(ckpt_dir),
    ]
    for name, cfg in dict(lightning_cfg.get("callbacks") or {}).items():
        if cfg is None:  # a later config may switch a callback off with `name: null`
            continue
        callbacks.append(instantiate_from_config(cfg, _path=f"lightning.callbacks.{name}"))
    return callbacks


def build_logger(lightning_cfg: Mapping[str, Any], run_dir: Path, version: str):
    """``lightning.logger`` (default: a CSVLogger in ``<run>/csv/<version>``); nothing is written yet."""
    from lightning.pytorch.loggers import CSVLogger

    cfg = lightning_cfg.get("logger")
    if not cfg:
        return CSVLogger(save_dir=str(run_dir), name="csv", version=version)
    cfg = dict(cfg)
    params = dict(cfg.get("params") or {})
    params.setdefault("save_dir", str(run_dir))
    return instantiate_from_config({"target": cfg.get("target"), "params": params}, _path="lightning.logger")


def build_trainer(config: DictConfig, run_dir: Path, ckpt_dir: Path, version: str, checkpoint_io) -> pl.Trainer:
    """The Trainer of a run in ``run_dir`` (which need not exist yet: nothing is written here)."""
    import lightning.pytorch as pl

    lightning_cfg = OmegaConf.to_container(config.get("lightning") or OmegaConf.create({}), resolve=True)
    kwargs = dict(lightning_cfg.get("trainer") or {})
    kwargs.setdefault("default_root_dir", str(run_dir))
    kwargs.setdefault("log_every_n_steps", 10)
    kwargs["plugins"] = list(kwargs.get("plugins") or []) + [checkpoint_io]
    kwargs["callbacks"] = build_callbacks(lightning_cfg, ckpt_dir)
    kwargs["logger"] = build_logger(lightning_cfg, run_dir, version)
    return _build(pl.Trainer, kwargs, "lightning.trainer")
