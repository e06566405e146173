"""Run directories: one folder per run (never shared), the checkpoint ``--resume`` continues from, the run's seed.

A run lives in ``<logdir>/<time>_<name>``; a second run with the same name started in the same
second gets ``<time>_<name>-1`` (the folder is claimed with an exclusive ``mkdir``, so two
processes never share one). ``run.json`` records the seed, which ``--resume`` reuses.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "RunPaths",
    "claim_run_dir",
    "plan_run_dir",
    "readable_alternative",
    "resolve_resume",
    "saved_seed",
    "save_run_info",
]

RUN_INFO = "run.json"


@dataclass
class RunPaths:
    """Where a run (or one ``--resume`` of it) writes; ``new``, ``written`` and ``log_dir`` record what
    this attempt created, so that an attempt failing before its first step can be undone."""

    run_dir: Path
    now: str
    resume_ckpt: Path | None = None
    new: bool = False
    written: list[Path] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def cfg_dir(self) -> Path:
        return self.run_dir / "configs"

    @property
    def image_dir(self) -> Path:
        return self.run_dir / "images"

    def make_subdirs(self) -> None:
        for d in (self.ckpt_dir, self.cfg_dir, self.image_dir):
            d.mkdir(parents=True, exist_ok=True)


def _candidates(logdir: Path, now: str, name: str) -> Iterator[Path]:
    yield logdir / f"{now}_{name}"
    k = 1
    while True:
        yield logdir / f"{now}_{name}-{k}"
        k += 1


def plan_run_dir(logdir: str | Path, now: str, name: str) -> Path:
    """The first of ``<now>_<name>``, ``<now>_<name>-1``, ... that does not exist yet (nothing is created)."""
    return next(p for p in _candidates(Path(logdir), now, name) if not p.exists())


def claim_run_dir(logdir: str | Path, now: str, name: str) -> Path:
    """Create and return the first free ``<now>_<name>[-k]`` folder with an exclusive ``mkdir``."""
    Path(logdir).mkdir(parents=True, exist_ok=True)
    candidates = _candidates(Path(logdir), now, name)
    while True:
        path = next(candidates)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _newest(paths: Sequence[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def resolve_resume(resume: str | Path) -> tuple[Path, Path, list[Path]]:
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
    configs = [
        c
        for c in (_newest(sorted(cfg_dir.glob("*-project.yaml"))), _newest(sorted(cfg_dir.glob("*-lightning.yaml"))))
        if c is not None
    ]
    if not configs:
        raise FileNotFoundError(f"--resume: {cfg_dir} holds no saved *-project.yaml config")
    return run_dir, ckpt, configs


def _complete(path: Path) -> bool:
    """Whether a torch checkpoint (a zip archive) is whole: its directory and every CRC check out."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return False


def readable_alternative(bad: Path) -> Path | None:
    """The newest other ``.ckpt`` beside ``bad`` that is a complete archive, if any."""
    others = sorted((p for p in bad.parent.glob("*.ckpt") if p != bad), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in others if _complete(p)), None)


def save_run_info(run_dir: Path, seed: int, argv: Sequence[str]) -> Path:
    """Write ``run.json`` (the seed and the command line of the latest start or resume)."""
    info = {"seed": seed, "argv": list(argv)}
    return atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2) + "\n", "run info")


def saved_seed(run_dir: Path) -> int | None:
    """The seed in ``run_dir/run.json``, or None for a run saved without one."""
    path = run_dir / RUN_INFO
    if not path.is_file():
        return None
    try:
        info: Any = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume: cannot read {path}: {err}") from err
    seed = info.get("seed") if isinstance(info, dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"--resume: {path} holds no integer 'seed' (got {seed!r}); pass -s/--seed")
    return seed
