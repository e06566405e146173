#!/usr/bin/env python
"""Merge weight parts (safetensors) into one file: merge_parts.py PART [PART ...] OUT."""

import sys

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    *parts, out = argv
    tensors, metadata = {}, {}
    for part in parts:
        overlap = set(tensors) & set(load_file(part))
        if overlap:
            raise SystemExit(f"{part} repeats tensors already merged, e.g. {sorted(overlap)[:3]}")
        tensors.update(load_file(part))
        with safe_open(part, "pt") as f:
            metadata.update(f.metadata() or {})
    save_file(tensors, out, metadata=metadata)
    print(f"wrote {out}: {len(tensors)} tensors from {len(parts)} parts")


if __name__ == "__main__":
    main(sys.argv[1:])
