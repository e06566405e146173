"""`python main.py --base a.yaml b.yaml key=value ...`: run directories, resume, Trainer assembly.

The merged config has three sections, as in sgm: ``model`` (the LightningModule block),
``data`` (a LightningDataModule block, optional for modules that make their own data)
and ``lightning`` (``trainer`` kwargs, ``callbacks``, ``logger``, ``modelcheckpoint``).
Heavy imports (torch, Lightning) happen inside `main`, so ``--help`` is instant.

Exit codes of `run` (``main.py``), each failure with one ``error:`` line on stderr:
0 the run finished; 2 bad input (config, file, unwritable output; nothing written);
3 a non-finite loss or weights stopped training; 4 a file could not be written (disk full,
I/O error; the previous checkpoints are intact); 130 Ctrl-C (SIGINT); 143 SIGTERM. The last
four save ``last.ckpt`` once a step was trained and say how to resume. 1 with a traceback
is a bug. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from unlearn.atomic import check_writable_dir
from unlearn.config import ConfigError, load_configs
from unlearn.run_dir import (
    RunPaths,
    claim_run_dir,
    plan_run_dir,
    readable_alternative,
    resolve_resume,
    save_run_info,
    saved_seed,
)
from unlearn.trainer_setup import build_trainer, check_lightning_config, with_defaults, with_source

log = logging.getLogger("unlearn")

DEFAULT_SEED = 23
EXIT_OK, EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_WRITE, EXIT_SIGINT, EXIT_SIGTERM = 0, 2, 3, 4, 130, 143


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
    parser.add_argument(
        "-b", "--base", nargs="*", metavar="config.yaml", default=[], help="config files, merged left to right"
    )
    parser.add_argument("-n", "--name", default="", help="run name (default: the config file names)")
    parser.add_argument("-r", "--resume", default="", help="a run directory or a .ckpt to resume from")
    parser.add_argument(
        "-s",
        "--seed",
        type=int,
        default=None,
        help=f"global seed (default {DEFAULT_SEED}; --resume: the seed saved with the run)",
    )
    parser.add_argument("-l", "--logdir", default="logs", help="folder holding run directories")
    parser.add_argument(
        "-t",
        "--train",
        type=_str2bool,
        nargs="?",
        const=True,
        default=True,
        help="train (default); --no-train only builds the run and validates configs",
    )
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dot-list overrides, e.g. lightning.trainer.max_steps=2"
    )
    return parser


def save_configs(config, paths: RunPaths) -> tuple[Path, Path]:
    """Write ``<now>-project.yaml`` and ``<now>-lightning.yaml`` (resolved) atomically into the run's configs/."""
    from omegaconf import OmegaConf

    from unlearn.atomic import atomic_write_text

    # Resolve first: lightning values may interpolate top-level keys (max_steps: ${iterations}).
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    project = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "lightning"])
    lightning_cfg = OmegaConf.create({"lightning": config.get("lightning", {})})
    project_path = paths.cfg_dir / f"{paths.now}-project.yaml"
    lightning_path = paths.cfg_dir / f"{paths.now}-lightning.yaml"
    for path, cfg in ((project_path, project), (lightning_path, lightning_cfg)):
        atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True), "config")
        paths.written.append(path)
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
    """Parse, merge, build and check everything, then create the run; return
    (trainer, model, data, paths, config, opts).

    Nothing is written until the whole config, the model, the data, the callbacks, the logger
    and the Trainer are built: a bad value leaves no run directory (and a failed ``--resume``
    leaves its run as it was). The output folder is probed for writing and the ``--resume``
    checkpoint is read (``weights_only``) before anything heavy is built.
    """
    from unlearn.checkpoint_io import SafeCheckpointIO

    opts = parse_args(argv)
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    checkpoint_io = SafeCheckpointIO()
    if opts.resume:
        run_dir, resume_ckpt, saved = resolve_resume(opts.resume)
        check_writable_dir(run_dir, "--resume")
        _preload(checkpoint_io, resume_ckpt)
        base = [str(p) for p in saved] + list(opts.base)
        seed = _resume_seed(opts.seed, run_dir)
    else:
        if not opts.base:
            raise ConfigError("no config given: pass --base configs/... (or --resume a run directory)")
        check_writable_dir(opts.logdir, "-l/--logdir")
        name = opts.name or "-".join(Path(b).stem for b in opts.base)
        run_dir, resume_ckpt, base = plan_run_dir(opts.logdir, now, name), None, list(opts.base)
        seed = DEFAULT_SEED if opts.seed is None else opts.seed
    config = with_defaults(load_configs(base, opts.overrides))
    if "model" not in config:
        raise ConfigError(f"the merged config has no 'model' section (files: {base})")
    from unlearn.engine.sources import check_model_source

    check_model_source(config)  # model_path / model_config, before anything heavy is imported or built
    check_lightning_config(config)
    _check_data_config(config)

    import lightning.pytorch as pl

    pl.seed_everything(seed, workers=True)
    model, data = _build_model_and_data(config)
    paths = RunPaths(run_dir, now, resume_ckpt)
    trainer = build_trainer(config, paths.run_dir, paths.ckpt_dir, now, checkpoint_io)

    # Everything is built and checked: only now is anything written.
    if not opts.resume:
        paths.run_dir = claim_run_dir(opts.logdir, now, name)
        paths.new = True
        if paths.run_dir != run_dir:  # another run took that name since it was planned
            log.info("%s was taken by another run: using %s", run_dir, paths.run_dir)
            trainer = build_trainer(config, paths.run_dir, paths.ckpt_dir, now, checkpoint_io)
    paths.log_dir = _new_log_dir(trainer)
    try:
        paths.make_subdirs()
        save_configs(config, paths)
        if paths.new:
            save_run_info(paths.run_dir, seed, sys.argv[1:] if argv is None else list(argv))
    except OSError:
        discard_attempt(paths)
        raise
    return trainer, model, data, paths, config, opts


def _preload(checkpoint_io, ckpt: Path) -> None:
    """Read the ``--resume`` checkpoint now; if it is unreadable, name the newest one that is whole."""
    from unlearn.checkpoint import UnsafeCheckpointError

    try:
        checkpoint_io.preload(ckpt)
    except UnsafeCheckpointError:
        raise
    except ValueError as err:
        other = readable_alternative(ckpt)
        hint = f"; the newest complete checkpoint beside it is {other}: --resume {other}" if other else ""
        raise ValueError(f"{err}{hint}") from None


def _resume_seed(seed: int | None, run_dir: Path) -> int:
    saved = saved_seed(run_dir)
    if seed is None:
        if saved is None:
            log.warning(
                "%s has no run.json (an older run): seeding with the default %d; pass -s to choose",
                run_dir,
                DEFAULT_SEED,
            )
            return DEFAULT_SEED
        log.info("Resuming with the run's seed %d", saved)
        return saved
    if saved is not None and seed != saved:
        log.info("Resuming with -s %d instead of the run's seed %d", seed, saved)
    return seed


def _check_data_config(config) -> None:
    """``data.params.batch_size`` is an integer >= 1 (DataLoader would refuse it only at fit)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, "data.params.batch_size", default=None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(with_source(config, f"data.params.batch_size: expected an integer >= 1, got {value!r}"))


def _build_model_and_data(config):
    from unlearn.config import instantiate_from_config

    try:
        model = instantiate_from_config(config.model, _path="model")
        data = instantiate_from_config(config.data, _path="data") if config.get("data") else None
    except ValueError as err:  # name the top-level key a bad value came from (lr=... -> base_learning_rate)
        message = with_source(config, str(err))
        if message == str(err):
            raise
        raise ConfigError(message) from err
    return model, data


def _new_log_dir(trainer) -> Path | None:
    """The logger's folder for this attempt, if it does not exist yet (removed if the attempt fails early)."""
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    return Path(log_dir) if log_dir and not Path(log_dir).exists() else None


def discard_attempt(paths: RunPaths) -> None:
    """Remove what this attempt wrote: a new run's whole folder, or a resume's configs and log folder."""
    if paths.new:
        shutil.rmtree(paths.run_dir, ignore_errors=True)
        log.info("Removed %s: the run stopped before training a step", paths.run_dir)
        return
    for path in paths.written:
        path.unlink(missing_ok=True)
    if paths.log_dir is not None:
        shutil.rmtree(paths.log_dir, ignore_errors=True)
    log.info("%s is left as it was before this --resume", paths.run_dir)


def fit(trainer, model, data, paths: RunPaths, opts: argparse.Namespace) -> Path:
    log.info("Run directory: %s", paths.run_dir)
    if opts.train:
        ckpt = str(paths.resume_ckpt) if paths.resume_ckpt else None
        trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    return paths.run_dir


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``main.py`` with ``argv``; returns the run directory. Errors are raised as they are."""
    trainer, model, data, paths, _, opts = prepare(argv)
    return fit(trainer, model, data, paths, opts)


def _setup_logging() -> None:
    # Lightning logs through its own handler; a root handler would print its lines twice.
    # One handler (on the stderr of the moment), however often `run` is called in one process.
    from unlearn.scripting import StderrHandler

    if not any(isinstance(h, StderrHandler) for h in log.handlers):
        log.addHandler(StderrHandler())
    log.setLevel(logging.INFO)
    log.propagate = False


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``main.py``; returns the exit code (see the module docstring).

    Bad input found while building the run prints one clear line, not a traceback. So do a
    non-finite loss, a failed save and an interrupt. Other errors during training keep their
    traceback: they are bugs, and the checkpoint callback has saved ``last.ckpt``."""
    from unlearn.atomic import NonFiniteError, WriteError

    _setup_logging()
    try:
        trainer, model, data, paths, _, opts = prepare(argv)
    except WriteError as err:
        return _error(str(err), EXIT_WRITE)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        return _error(str(err), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _error("interrupted by Ctrl-C (SIGINT) while the run was being built: nothing was trained", EXIT_SIGINT)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from unlearn.callbacks.last_checkpoint import CheckpointOnException
    from unlearn.callbacks.non_finite import NonFiniteLossError

    saver = next((cb for cb in trainer.callbacks if isinstance(cb, CheckpointOnException)), None)
    try:
        fit(trainer, model, data, paths, opts)
    except SIGTERMException:
        return _error(_stopped(saver, paths, "SIGTERM"), EXIT_SIGTERM)
    except (SystemExit, KeyboardInterrupt) as err:  # Lightning turns Ctrl-C into sys.exit(1)
        if saver is not None and isinstance(saver.exception, KeyboardInterrupt) or isinstance(err, KeyboardInterrupt):
            return _error(_stopped(saver, paths, "Ctrl-C (SIGINT)"), EXIT_SIGINT)
        raise
    except (NonFiniteLossError, NonFiniteError) as err:
        return _error(f"{err}; {_saved(saver, paths, resume=False)}", EXIT_NON_FINITE)
    except WriteError as err:
        return _error(f"{err}; {_saved(saver, paths)}", EXIT_WRITE)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        trained = saver is not None and saver.trained(trainer)
        if trained and not isinstance(err, FileNotFoundError):
            raise  # a bug in the middle of training: keep the traceback
        if not trained:
            discard_attempt(paths)
        return _error(str(err), EXIT_BAD_INPUT)
    return EXIT_OK


def _saved(saver, paths: RunPaths, resume: bool = True) -> str:
    """What the run left to resume from, and (``resume``) the command that does."""
    how = f"; resume with: python main.py --resume {paths.run_dir}" if resume else ""
    if saver is not None and saver.saved:
        return f"saved {saver.path} at step {saver.step}{how}"
    if (paths.ckpt_dir / "last.ckpt").is_file():
        return f"kept the previous {paths.ckpt_dir / 'last.ckpt'}{how}"
    return "no checkpoint was saved (no step was trained)"


def _stopped(saver, paths: RunPaths, signal_name: str) -> str:
    step = saver.step if saver is not None and saver.step is not None else "?"
    return (
        f"interrupted by {signal_name} at step {step}: the run did not finish and its end-of-run outputs "
        f"(exports, final evaluation) were not written; {_saved(saver, paths)}"
    )
