"""Build a trained model for sampling or evaluation from configs, a run directory or a `.ckpt`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from unlearn.checkpoint import load_into
from unlearn.config import ConfigError, instantiate_from_config, load_configs
from unlearn.engine.sources import check_model_source

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
    masks: str | Path | None = None,
    weights: str | Path | None = None,
):
    """The ``model`` of the merged config, with weights from ``ckpt`` (or the run's last).

    * ``run``: a run directory; its saved config and newest ``last.ckpt``.
    * ``ckpt``: a Lightning checkpoint; its run directory supplies the config unless
      ``configs`` are given.
    * ``configs`` alone: weights come from the config's own ``ckpt_path`` entries.
    Extra ``configs`` are merged after the run's, then ``overrides``.
    ``masks``: a mask file (`unlearn.hooks.save_masks`) applied to the model's network;
    a mask-training engine's own training masks are removed first.
    ``weights``: an erased-weights file (``erased.safetensors`` of an ESD run, changed UNet
    parameters under diffusers names or text encoder parameters under ``text_encoder.``), applied
    after every checkpoint (`unlearn.engine.export.apply_erased_weights`).
    """
    base: list[Path] = []
    ckpt_file: Path | None = Path(ckpt) if ckpt else None
    if run is not None:
        run_dir = Path(run)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--run: no such run directory: {run_dir}")
        base += _run_configs(run_dir)
        ckpt_file = ckpt_file or _last_checkpoint(run_dir)
    elif ckpt_file is not None and not configs:
        if not ckpt_file.is_file():
            raise FileNotFoundError(f"--ckpt: no such checkpoint: {ckpt_file}")
        run_dir = ckpt_file.parent.parent if ckpt_file.parent.name == "checkpoints" else ckpt_file.parent
        base += _run_configs(run_dir)
    base += [Path(c) for c in configs]
    if not base:
        raise ConfigError("give a run directory, a checkpoint or a model config")
    config = load_configs(base, overrides)
    if "model" not in config:
        raise ConfigError(f"no 'model' section in {[str(b) for b in base]}")
    check_model_source(config)  # model_path / model_config, before any weights load
    model = instantiate_from_config(config.model, _path="model")
    if ckpt_file is not None:
        load_into(model, ckpt_file, key="--ckpt" if ckpt else "--run", strict=True)  # weights_only
    if weights is not None:
        from unlearn.engine.export import apply_erased_weights

        apply_erased_weights(model, weights)
    if masks is not None:
        _apply_mask_file(model, masks)
    model.eval()
    return model


def _apply_mask_file(model, path: str | Path) -> None:
    from unlearn.hooks import MaskManager, apply_masks

    if not hasattr(model, "network"):
        raise ValueError(f"--masks: {type(model).__name__} has no network to apply {path} to")
    if isinstance(getattr(model, "masks", None), MaskManager):
        model.masks.remove()
    # A submodule, so the fixed masks follow the model's .to(device).
    model.add_module("applied_masks", apply_masks(model.network, path))
    log.info("Applied masks from %s", path)
