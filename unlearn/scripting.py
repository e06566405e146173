"""What the command-line scripts share: the model-source flags, output paths checked before any work,
a model's toy canvas and a clean error exit."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearn.atomic import NonFiniteError, WriteError, check_writable_dir

if TYPE_CHECKING:
    from unlearn.data.canvas import CanvasSpec


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--run / --ckpt / --config / --set / --masks / --weights, as `load_model_from_args` reads them."""
    src = parser.add_argument_group("model (one of --run, --ckpt, --config; --config may add to the others)")
    src.add_argument("--run", help="a run directory (its saved config and newest last.ckpt)")
    src.add_argument("--ckpt", help="a Lightning checkpoint")
    src.add_argument("--config", nargs="*", default=[], help="model config files, merged left to right")
    src.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    src.add_argument("--masks", help="a mask file (masks.safetensors of a mask-erasure run) to apply")
    src.add_argument(
        "--weights", help="erased weights (erased.safetensors of an ESD run: UNet or text encoder tensors) to apply"
    )


def load_model_from_args(args: argparse.Namespace, device: str = "cpu"):
    from unlearn.engine.loading import load_model

    model = load_model(
        args.config, run=args.run, ckpt=args.ckpt, overrides=args.set, masks=args.masks, weights=args.weights
    )
    return model.to(device)


def add_trajectory_arguments(parser: argparse.ArgumentParser) -> None:
    """--steps / --sampler / --guidance-scale / --batch-size, defaulting to the trajectory mask
    erasure trains through (configs/methods/minimalist.yaml: Euler, 10 steps, CFG 3)."""
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=96, help="images per sampling batch")


def output_path(out: str | Path, suffix: str, flag: str = "--out") -> Path:
    """The ``--out`` path of a script that writes a ``suffix`` file, checked writable before any
    work starts; another suffix or a folder that cannot be written is a ValueError naming it."""
    out = Path(out)
    if out.suffix != suffix:
        raise ValueError(f"{flag} must name a {suffix} file, got {out}")
    if out.is_dir():
        raise ValueError(f"{flag}: {out} is a folder, expected a {suffix} file")
    check_writable_dir(out.parent, flag)
    return out


def json_output(out: str | Path) -> Path:
    """The ``--out`` path of a script that writes a JSON result; anything else is a ValueError."""
    return output_path(out, ".json")


def output_dir(out: str | Path, flag: str = "--out") -> Path:
    """The ``--out`` folder of a script, checked writable (or creatable) before any work starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag}: {out} is a file, expected a folder")
    return check_writable_dir(out, flag)


def canvas_spec_of(model, config) -> CanvasSpec:
    """The toy canvas (objects, styles) a model was trained on, from its metadata; a model
    without it is a ValueError naming ``config`` (where it came from)."""
    from unlearn.data.canvas import CanvasSpec

    if getattr(model, "canvas_concepts", None) is None:
        raise ValueError(f"--config {config}: the model has no canvas metadata (objects, styles)")
    return CanvasSpec(*map(tuple, model.canvas_concepts))


class StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is when a record is emitted, so that a
    process which swaps stderr (a test capturing output) never logs into a closed stream."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; always use the current stderr
        pass


def run_script(main: Callable[[], Any]) -> None:
    """Run a script's ``main`` with logging; failures exit with one line, not a traceback:
    2 bad input (or a missing optional package such as nudenet), 3 a non-finite tensor refused
    on save, 4 a file that could not be written (disk full, I/O error; nothing half-written)."""
    logging.basicConfig(level=logging.INFO, handlers=[StderrHandler()], force=True)  # a script owns the root logger
    try:
        main()
    except WriteError as err:
        _exit(err, 4)
    except NonFiniteError as err:
        _exit(err, 3)
    except (ValueError, FileNotFoundError, ImportError) as err:
        _exit(err, 2)


def _exit(err: BaseException, code: int) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)
