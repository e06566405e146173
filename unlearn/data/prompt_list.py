"""Text prompts for data-free distillation (DMD2 trains its generator on prompts only).

`PromptDataset` yields ``{"txt": prompt}``; item ``i`` is a pure function of
``(seed, i)``, so any worker count, order or resume gives the same prompts. Sources, in
order of precedence:

* ``prompts``: a list of strings, drawn uniformly;
* ``prompts_file``: a text file, one prompt per line (blank lines skipped), drawn uniformly;
* otherwise the toy canvas captions (`unlearn.data.captions.make_caption`) in
  ``canvas_caption_mode``: ``"mixed"`` (the base model's training captions), ``"joint"``,
  ``"object"``, ``"style"``, or ``"eval"`` (the 64 fixed evaluation prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from unlearn.data.canvas import CANVAS
from unlearn.data.captions import CAPTION_MODES, eval_prompt, make_caption

__all__ = ["PromptDataset", "read_prompt_file"]

CANVAS_MODES = (*CAPTION_MODES, "eval")


def read_prompt_file(path: str | Path, key: str = "prompts_file") -> list[str]:
    """Non-blank lines of a text file; FileNotFoundError / ValueError name ``key`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: no such prompt file: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{key}: {path} holds no prompts")
    return prompts


class PromptDataset(Dataset):
    """``length`` prompts drawn from a list, a file or the toy canvas captions.

    Args:
        prompts / prompts_file: explicit prompts (give at most one); see the module docstring.
        canvas_caption_mode: caption mode of the canvas fallback (``"mixed"``, ..., ``"eval"``).
        length: number of items (an epoch); distillation runs are bounded by ``max_steps``.
        seed: item ``i`` depends only on ``(seed, i)``.
    """

    def __init__(
        self,
        prompts: Sequence[str] | None = None,
        prompts_file: str | None = None,
        canvas_caption_mode: str = "mixed",
        length: int = 1_000_000,
        seed: int = 0,
    ) -> None:
        if prompts is not None and prompts_file is not None:
            raise ValueError("prompts_config: give prompts or prompts_file, not both")
        if length < 1:
            raise ValueError(f"prompts_config.length: expected >= 1, got {length}")
        if prompts is not None:
            if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompts_config.prompts: expected a non-empty list of strings, got {prompts!r}")
            self.prompts: list[str] | None = list(prompts)
        elif prompts_file is not None:
            self.prompts = read_prompt_file(prompts_file, "prompts_config.prompts_file")
        else:
            if canvas_caption_mode not in CANVAS_MODES:
                raise ValueError(
                    f"prompts_config.canvas_caption_mode: expected one of {CANVAS_MODES}, got {canvas_caption_mode!r}"
                )
            self.prompts = None
            if canvas_caption_mode == "eval":
                objs, styles = range(len(CANVAS.objects)), range(len(CANVAS.styles))
                self.prompts = [eval_prompt(o, s) for o in objs for s in styles]
        self.canvas_caption_mode = canvas_caption_mode
        self.length = int(length)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, str]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a PromptDataset of length {self.length}")
        rng = np.random.default_rng([self.seed, index])
        if self.prompts is not None:
            return {"txt": self.prompts[int(rng.integers(len(self.prompts)))]}
        obj = int(rng.integers(len(CANVAS.objects)))
        style = int(rng.integers(len(CANVAS.styles)))
        return {"txt": make_caption(obj, style, rng, self.canvas_caption_mode)}
