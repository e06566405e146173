"""Load a file under scripts/ as a module, for tests that call a script's ``main(argv)``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """``load_script("bench/toy_table.py")``: a fresh module built from ``scripts/<relative>``."""
    path = ROOT / "scripts" / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
