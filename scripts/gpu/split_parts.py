#!/usr/bin/env python
"""Split a safetensors file into parts small enough for the device tool's return limit.

    split_parts.py IN OUT_DIR [MAX_MIB]     # default 15 MiB; writes OUT_DIR/part-00.safetensors, ...

Tensors keep their names and order; every part carries the file's metadata. Join them
again with merge_parts.py. A single tensor larger than MAX_MIB is an error.
"""

import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    src, out_dir = argv[0], Path(argv[1])
    limit = float(argv[2] if len(argv) == 3 else 15) * 2**20
    out_dir.mkdir(parents=True, exist_ok=True)
    with safe_open(src, "pt") as f:
        metadata = f.metadata() or {}
        parts, current, size = [], {}, 0
        for name in f.keys():
            t = f.get_tensor(name)
            n = t.numel() * t.element_size()
            if n > limit:
                raise SystemExit(f"{name} alone is {n / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB limit")
            if current and size + n > limit:
                parts.append(current)
                current, size = {}, 0
            current[name] = t
            size += n
        if current:
            parts.append(current)
    for i, tensors in enumerate(parts):
        save_file(tensors, str(out_dir / f"part-{i:02d}.safetensors"), metadata=metadata)
    print(f"wrote {len(parts)} parts of {src} to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
