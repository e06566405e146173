"""What attacks aim at: the prompts of a concept and images of it.

* On the toy canvas, the prompts of a style are its evaluation prompt with every object ("an
  outlined circle", ...) and those of an object its prompt in every style; the images of a
  prompt are real renders of that (object, style) cell (`unlearn.data.canvas.render_canvas`),
  from seeds the benchmark's images never use.
* Elsewhere: prompts from a file (one a line), images from a folder, or the original model's
  samples of the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from unlearn.data.canvas import CanvasSpec, render_canvas
from unlearn.data.captions import eval_prompt

__all__ = ["RENDER_SEED", "toy_prompts", "toy_renders", "folder_images", "original_images"]

# Renders of a cell start at this seed: far from the canvas datamodule's and the benchmark's draws.
RENDER_SEED = 7_000_000


def toy_prompts(concept: str, spec: CanvasSpec) -> tuple[list[str], list[dict[str, str]]]:
    """(prompts, their fields) of ``concept``: its evaluation prompt in every cell of its row or column."""
    kind = spec.concept_kind(concept)  # ValueError naming the canvas's concepts
    cells = [(o, concept) for o in spec.objects] if kind == "style" else [(concept, s) for s in spec.styles]
    return [eval_prompt(o, s, spec) for o, s in cells], [{"obj": o, "style": s} for o, s in cells]


def toy_renders(obj: str, style: str, count: int, size: int = 32, seed: int = RENDER_SEED) -> torch.Tensor:
    """``count`` renders of (obj, style), (count, 3, size, size) in [-1, 1]."""
    images = np.stack([render_canvas(obj, style, seed + k, size) for k in range(count)])  # (N, H, W, 3) uint8
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def folder_images(folder: str | Path, size: int, limit: int | None = None) -> torch.Tensor:
    """The images of ``folder`` (png/jpg/jpeg/webp), centre-cropped and resized to ``size``; (N, 3, s, s)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--target-images: no such folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))[:limit]
    if not files:
        raise ValueError(f"--target-images: {folder} holds no .png/.jpg/.jpeg/.webp image")
    out = []
    for path in files:
        image = Image.open(path).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1.0)
    return torch.stack(out)


@torch.no_grad()
def original_images(original, prompt: str, seeds: Sequence[int]) -> torch.Tensor:
    """The original model's samples of ``prompt`` (one per seed), the concept's images when no real
    ones are given."""
    return original.generate([prompt] * len(seeds), seeds=list(seeds)).cpu()
