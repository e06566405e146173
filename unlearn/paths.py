"""Resolve local model paths; nothing in `unlearn` ever reaches a model hub.

Errors name the constructor argument the path came from, and say what to pass instead
when the value looks like a Hugging Face Hub id (``"org/name"``).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["looks_like_hub_id", "resolve_local_dir", "resolve_local_file"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A name ending in a weights-file suffix is a local file that is missing, not a repository.
_FILE_SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".yaml", ".json"})


def looks_like_hub_id(path: str | Path) -> bool:
    """True for strings shaped like ``"org/name"`` that are not a local path.

    ``checkpoints/missing.safetensors`` is not: a weights-file suffix, or a first component
    that exists here (``checkpoints/``), says the user meant a local file.
    """
    text = str(path)
    if not _HUB_ID.match(text) or Path(text).exists():
        return False
    return Path(text).suffix.lower() not in _FILE_SUFFIXES and not Path(text.split("/")[0]).exists()


def _missing(path: str | Path, arg: str, what: str, expected: str = "") -> FileNotFoundError:
    layout = f" Expected {expected}." if expected else ""
    if looks_like_hub_id(path):
        return FileNotFoundError(
            f"{arg}={str(path)!r} looks like a Hugging Face Hub id, but unlearn never downloads: "
            f"pass a local {what} instead (for example a folder written by save_pretrained, "
            f"under checkpoints/).{layout}"
        )
    return FileNotFoundError(f"{arg}: no such {what}: {str(path)!r}; pass a local {what}.{layout}")


def resolve_local_dir(path: str | Path, arg: str, subfolder: str | None = None, expected: str = "") -> Path:
    """Return ``path`` (and ``path/subfolder``) as an existing local folder.

    Raises FileNotFoundError naming ``arg`` when the folder (or its subfolder) is absent.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise _missing(path, arg, "folder", expected)
    if subfolder:
        sub = root / subfolder
        if not sub.is_dir():
            children = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"{arg}={str(path)!r} has no subfolder {subfolder!r} (subfolders: {children or 'none'})"
            )
    return root


def resolve_local_file(path: str | Path, arg: str, expected: str = "") -> Path:
    """Return ``path`` as an existing local file; FileNotFoundError naming ``arg`` otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise _missing(path, arg, "file", expected)
    return file
