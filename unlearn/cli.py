"""`python main.py --base a.yaml b.yaml key=value ...`: run directories, resume, Trainer assembly.

The merged config has three sections, as in sgm: ``model`` (the LightningModule block),
``data`` (a LightningDataModule block, optional for modules that make their own data)
and ``lightning`` (``trainer`` kwargs, ``callbacks``, ``logger``, ``modelcheckpoint``).
Heavy imports (torch, Lightning) happen inside `main`, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from unlearn.config import ConfigError, load_configs

log = logging.getLogger("unlearn")


def _str2bool(value: str) -> bool:
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Train, erase or distill a diffusion model from merged YAML configs "
        "(later --base files win; key=value overrides come last).",
        epilog="Example: python main.py --base configs/models/toy_canvas.yaml configs/methods/esd_x.yaml "
        "concept=striped lightning.trainer.max_steps=100",
    )
    parser.add_argument("-b", "--base", nargs="*", metavar="config.yaml", default=[],
                        help="config files, merged left to right")
    parser.add_argument("-n", "--name", default="", help="run name (default: the config file names)")
    parser.add_argument("-r", "--resume", default="", help="a run directory or a .ckpt to resume from")
    parser.add_argument("-s", "--seed", type=int, default=23, help="global seed")
    parser.add_argument("-l", "--logdir", default="logs", help="folder holding run directories")
    parser.add_argument("-t", "--train", type=_str2bool, nargs="?", const=True, default=True,
                        help="train (default); --no-train only builds the run and validates configs")
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dot-list overrides, e.g. lightning.trainer.max_steps=2")
    return parser


@dataclass
class RunPaths:
    run_dir: Path
    ckpt_dir: Path
    cfg_dir: Path
    image_dir: Path
    now: str
    resume_ckpt: Path | None = None

    def make(self) -> None:
        for d in (self.run_dir, self.ckpt_dir, self.cfg_dir, self.image_dir):
            d.mkdir(parents=True, exist_ok=True)


def _newest(paths: Sequence[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def resolve_resume(resume: str) -> tuple[Path, Path, list[Path]]:
    """(run dir, checkpoint, saved configs) for ``--resume`` given a run dir or a `.ckpt`."""
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no such run directory or checkpoint: {path}")
    if path.is_file():
        ckpt = path
        # logs/<run>/checkpoints/x.ckpt -> logs/<run>
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    else:
        run_dir = path
        ckpt = _newest(sorted((run_dir / "checkpoints").glob("last*.ckpt")))
        if ckpt is None:
            raise FileNotFoundError(f"--resume: {run_dir}/checkpoints has no last.ckpt to resume from")
    cfg_dir = run_dir / "configs"
    configs = [c for c in (_newest(sorted(cfg_dir.glob("*-project.yaml"))),
                           _newest(sorted(cfg_dir.glob("*-lightning.yaml")))) if c is not None]
    if not configs:
        raise FileNotFoundError(f"--resume: {cfg_dir} holds no saved *-project.yaml config")
    return run_dir, ckpt, configs


def run_paths(opts: argparse.Namespace, now: str) -> tuple[RunPaths, list[str]]:
    base = list(opts.base)
    resume_ckpt = None
    if opts.resume:
        run_dir, resume_ckpt, saved = resolve_resume(opts.resume)
        base = [str(p) for p in saved] + base
    else:
        if not base:
            raise ConfigError("no config given: pass --base configs/... (or --resume a run directory)")
        name = opts.name or "-".join(Path(b).stem for b in base)
        run_dir = Path(opts.logdir) / f"{now}_{name}"
    paths = RunPaths(run_dir, run_dir / "checkpoints", run_dir / "configs", run_dir / "images", now, resume_ckpt)
    return paths, base


def _build_callbacks(lightning_cfg, paths: RunPaths) -> list:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from unlearn.callbacks import CheckpointAtTrainEnd, CheckpointOnException, ImageLogger
    from unlearn.config import instantiate_from_config

    ckpt_params = {"dirpath": str(paths.ckpt_dir), "filename": "{epoch:06}-{step:09}", "save_last": True,
                   "every_n_train_steps": None, "save_top_k": -1,
                   # Resuming must overwrite last.ckpt, not add last-v1.ckpt beside it.
                   "enable_version_counter": False}
    ckpt_params.update(dict(lightning_cfg.get("modelcheckpoint", {}).get("params", {})))
    callbacks = [ModelCheckpoint(**ckpt_params), CheckpointOnException(paths.ckpt_dir),
                 CheckpointAtTrainEnd(paths.ckpt_dir)]
    for name, cfg in dict(lightning_cfg.get("callbacks", {})).items():
        if cfg is None:  # a later config may switch a callback off with `name: null`
            continue
        cb = instantiate_from_config(cfg, _path=f"lightning.callbacks.{name}")
        if isinstance(cb, ImageLogger):
            cb.run_dir = paths.run_dir
        callbacks.append(cb)
    return callbacks


def _build_logger(lightning_cfg, paths: RunPaths):
    from lightning.pytorch.loggers import CSVLogger

    from unlearn.config import instantiate_from_config

    cfg = lightning_cfg.get("logger")
    if not cfg:
        return CSVLogger(save_dir=str(paths.run_dir), name="csv", version=paths.now)
    cfg = dict(cfg)
    params = dict(cfg.get("params") or {})
    params.setdefault("save_dir", str(paths.run_dir))
    return instantiate_from_config({"target": cfg["target"], "params": params}, _path="lightning.logger")


def save_configs(config, paths: RunPaths) -> tuple[Path, Path]:
    from omegaconf import OmegaConf

    # Resolve first: lightning values may interpolate top-level keys (max_steps: ${iterations}).
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    project = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "lightning"])
    lightning_cfg = OmegaConf.create({"lightning": config.get("lightning", {})})
    project_path = paths.cfg_dir / f"{paths.now}-project.yaml"
    lightning_path = paths.cfg_dir / f"{paths.now}-lightning.yaml"
    OmegaConf.save(project, project_path, resolve=True)
    OmegaConf.save(lightning_cfg, lightning_path, resolve=True)
    return project_path, lightning_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` items swallowed by ``--base`` become overrides.

    ``--base a.yaml b.yaml key=value`` is how users write it, and argparse's ``nargs="*"``
    would otherwise read ``key=value`` as one more config file.
    """
    opts = build_parser().parse_args(argv)
    is_override = [_is_override(b) for b in opts.base]  # one file-system check per item
    moved = [b for b, o in zip(opts.base, is_override) if o]
    opts.base = [b for b, o in zip(opts.base, is_override) if not o]
    opts.overrides = moved + list(opts.overrides)
    return opts


def _is_override(item: str) -> bool:
    """``key=value`` that names no existing file (a config path may contain "=")."""
    if "=" not in item:
        return False
    try:
        return not Path(item).is_file()
    except OSError:  # e.g. a value longer than the file system's name limit
        return True


def prepare(argv: Sequence[str] | None = None):
    """Parse, merge and build everything; return (trainer, model, data, paths, config)."""
    opts = parse_args(argv)
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    paths, base = run_paths(opts, now)
    config = load_configs(base, opts.overrides)
    if "model" not in config:
        raise ConfigError(f"the merged config has no 'model' section (files: {base})")
    from unlearn.engine.sources import check_model_source

    check_model_source(config)  # model_path / model_config, before anything heavy is imported or built

    import lightning.pytorch as pl

    from unlearn.config import instantiate_from_config

    pl.seed_everything(opts.seed, workers=True)
    lightning_cfg = config.get("lightning", {})
    model = instantiate_from_config(config.model, _path="model")
    data = instantiate_from_config(config.data, _path="data") if config.get("data") else None

    paths.make()
    save_configs(config, paths)
    trainer_kwargs = dict(lightning_cfg.get("trainer", {}))
    trainer_kwargs.setdefault("default_root_dir", str(paths.run_dir))
    trainer_kwargs.setdefault("log_every_n_steps", 10)
    trainer = pl.Trainer(
        **trainer_kwargs,
        callbacks=_build_callbacks(lightning_cfg, paths),
        logger=_build_logger(lightning_cfg, paths),
    )
    if hasattr(model, "run_dir"):
        model.run_dir = paths.run_dir
    return trainer, model, data, paths, config, opts


def fit(trainer, model, data, paths: RunPaths, opts: argparse.Namespace) -> Path:
    log.info("Run directory: %s", paths.run_dir)
    if opts.train:
        ckpt = str(paths.resume_ckpt) if paths.resume_ckpt else None
        trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    return paths.run_dir


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``main.py`` with ``argv``; returns the run directory."""
    trainer, model, data, paths, _, opts = prepare(argv)
    return fit(trainer, model, data, paths, opts)


def _setup_logging() -> None:
    # Lightning logs through its own handler; a root handler would print its lines twice.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``main.py``: bad input found while building the run (config mistakes,
    missing files, invalid values) prints one clear line, not a traceback. Errors during
    training keep their traceback: they are bugs, and the checkpoint callback has saved."""
    _setup_logging()
    try:
        trainer, model, data, paths, _, opts = prepare(argv)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        fit(trainer, model, data, paths, opts)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
