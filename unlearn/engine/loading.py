"""Build a trained model for sampling or evaluation from configs, a run directory or a `.ckpt`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from unlearn.checkpoint import load_into
from unlearn.config import ConfigError, instantiate_from_config, load_configs

log = logging.getLogger(__name__)


def _run_configs(run_dir: Path) -> list[Path]:
    cfgs = sorted((run_dir / "configs").glob("*-project.yaml"))
    if not cfgs:
        raise FileNotFoundError(f"{run_dir}/configs holds no *-project.yaml: is {run_dir} a run directory?")
    return [max(cfgs, key=lambda p: p.stat().st_mtime)]


def _last_checkpoint(run_dir: Path) -> Path:
    ckpts = sorted((run_dir / "checkpoints").glob("last*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}/checkpoints has no last.ckpt")
    return max(ckpts, key=lambda p: p.stat().st_mtime)


def load_model(
    configs: Sequence[str | Path] = (),
    run: str | Path | None = None,
    ckpt: str | Path | None = None,
    overrides: Sequence[str] = (),
):
    """The ``model`` of the merged config, with weights from ``ckpt`` (or the run's last).

    * ``run``: a run directory; its saved config and newest ``last.ckpt``.
    * ``ckpt``: a Lightning checkpoint; its run directory supplies the config unless
      ``configs`` are given.
    * ``configs`` alone: weights come from the config's own ``ckpt_path`` entries.
    Extra ``configs`` are merged after the run's, then ``overrides``.
    """
    base: list[Path] = []
    weights: Path | None = Path(ckpt) if ckpt else None
    if run is not None:
        run_dir = Path(run)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--run: no such run directory: {run_dir}")
        base += _run_configs(run_dir)
        weights = weights or _last_checkpoint(run_dir)
    elif weights is not None and not configs:
        if not weights.is_file():
            raise FileNotFoundError(f"--ckpt: no such checkpoint: {weights}")
        run_dir = weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent
        base += _run_configs(run_dir)
    base += [Path(c) for c in configs]
    if not base:
        raise ConfigError("give a run directory, a checkpoint or a model config")
    config = load_configs(base, overrides)
    if "model" not in config:
        raise ConfigError(f"no 'model' section in {[str(b) for b in base]}")
    model = instantiate_from_config(config.model, _path="model")
    if weights is not None:
        load_into(model, weights, key="ckpt", strict=True)
    model.eval()
    return model
