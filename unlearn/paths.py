"""Local-path checks shared by every loader: nothing in unlearn downloads from a model hub."""

from __future__ import annotations

import re
from pathlib import Path

# "org/name" with no such local folder: what a user types when they expect a hub download.
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def require_local_path(path: str | Path, key: str, kind: str = "any", expected: str = "") -> Path:
    """Return ``path`` as a Path if it exists locally, else raise FileNotFoundError.

    ``key`` is the config key or argument that held the path; ``kind`` is ``"dir"``,
    ``"file"`` or ``"any"``; ``expected`` describes the layout the caller needs.
    """
    p = Path(path).expanduser()
    layout = f" Expected {expected}." if expected else ""
    if not p.exists():
        if _HUB_ID.match(str(path)):
            raise FileNotFoundError(
                f"{key}: {str(path)!r} looks like a model-hub id, and unlearn never downloads. "
                f"Download it where you have internet and pass the local folder instead "
                f"(for example {key}=checkpoints/{Path(str(path)).name}).{layout}"
            )
        raise FileNotFoundError(f"{key}: no such file or folder: {p}.{layout}")
    if kind == "dir" and not p.is_dir():
        raise FileNotFoundError(f"{key}: {p} is a file, expected a folder.{layout}")
    if kind == "file" and not p.is_file():
        raise FileNotFoundError(f"{key}: {p} is a folder, expected a file.{layout}")
    return p
