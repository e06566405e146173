"""Torch Dataset and Lightning DataModule of procedurally rendered canvas images.

Items follow sgm's small-dataset convention: ``{"jpg": (3, H, W) float in [-1, 1],
"txt": str}``, plus the integer labels ``"object"`` and ``"style"`` (indices into
``CANVAS_OBJECTS`` / ``CANVAS_STYLES``, also when a subset is drawn). Item ``i`` depends only
on ``(seed, i)``, so any worker count and order gives the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from unlearn.data.canvas import CANVAS, render_canvas
from unlearn.data.captions import CAPTION_MODES, make_caption

__all__ = ["CanvasDataset", "CanvasDataModule"]

# Train and validation sets use seed and seed + _VAL_SEED_OFFSET; items are keyed by
# (seed, i) through a SeedSequence, so the two sets never share an image.
_VAL_SEED_OFFSET = 1_000_003


class CanvasDataset(Dataset):
    """``length`` canvas images, each drawn from ``objects`` x ``styles`` uniformly.

    Args:
        length: number of items.
        seed: dataset seed; item ``i`` is a pure function of ``(seed, i)``.
        image_size: side of the rendered images in pixels.
        caption_mode: ``"joint"``, ``"object"``, ``"style"`` or ``"mixed"``.
        object_caption_prob / style_caption_prob: share of object-only / style-only
            captions in ``"mixed"`` mode (the rest is joint).
        objects / styles: optional subsets (names); labels stay indices of the full lists.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        image_size: int = 32,
        caption_mode: str = "mixed",
        object_caption_prob: float = 0.1,
        style_caption_prob: float = 0.1,
        objects: Sequence[str] | None = None,
        styles: Sequence[str] | None = None,
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption_mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
        self.length = int(length)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.caption_mode = caption_mode
        self.object_caption_prob = float(object_caption_prob)
        self.style_caption_prob = float(style_caption_prob)
        self.object_ids = [CANVAS.object_index(o) for o in (objects if objects is not None else CANVAS.objects)]
        self.style_ids = [CANVAS.style_index(s) for s in (styles if styles is not None else CANVAS.styles)]
        if not self.object_ids or not self.style_ids:
            raise ValueError(f"objects and styles must not be empty, got objects={objects}, styles={styles}")

    def __len__(self) -> int:
        return self.length

    def labels(self, index: int) -> tuple[int, int, np.random.Generator, int]:
        """(object id, style id, caption rng, render seed) of item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a CanvasDataset of length {self.length}")
        rng = np.random.default_rng([self.seed, index])
        obj = self.object_ids[int(rng.integers(len(self.object_ids)))]
        style = self.style_ids[int(rng.integers(len(self.style_ids)))]
        render_seed = int(rng.integers(2**63 - 1))
        return obj, style, rng, render_seed

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | int]:
        obj, style, rng, render_seed = self.labels(index)
        image = render_canvas(obj, style, render_seed, self.image_size)  # (H, W, 3) uint8
        jpg = torch.from_numpy(image).permute(2, 0, 1).float().div_(127.5).sub_(1.0)  # (3, H, W)
        txt = make_caption(obj, style, rng, self.caption_mode, self.object_caption_prob, self.style_caption_prob)
        return {"jpg": jpg, "txt": txt, "object": obj, "style": style}


class CanvasDataModule(L.LightningDataModule):
    """Train / validation canvas datasets with disjoint seeds."""

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        train_length: int = 100_000,
        val_length: int = 1_024,
        image_size: int = 32,
        seed: int = 0,
        caption_mode: str = "mixed",
        object_caption_prob: float = 0.1,
        style_caption_prob: float = 0.1,
        objects: Sequence[str] | None = None,
        styles: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        common = dict(
            image_size=image_size,
            caption_mode=caption_mode,
            object_caption_prob=object_caption_prob,
            style_caption_prob=style_caption_prob,
            objects=list(objects) if objects is not None else None,
            styles=list(styles) if styles is not None else None,
        )
        self.train_set = CanvasDataset(train_length, seed=seed, **common)
        self.val_set = CanvasDataset(val_length, seed=seed + _VAL_SEED_OFFSET, **common)

    def _loader(self, dataset: CanvasDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
