"""The canvas judge: a small CNN that names the object and the style of a canvas image.

It plays the role of UnlearnCanvas's object and style classifiers (one network, two heads).
Checkpoints are single safetensors files whose metadata records the concept lists, the
image size and the architecture, so a judge can never silently score another canvas.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from unlearn.data.canvas import CANVAS_OBJECTS, CANVAS_STYLES

__all__ = ["CanvasJudge", "save_judge", "load_judge"]

logger = logging.getLogger(__name__)

_FORMAT = "unlearn.canvas_judge/1"


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CanvasJudge(nn.Module):
    """Conv stack -> global average pool -> features ``(B, F)`` -> object and style heads.

    Args:
        objects / styles: concept names; head sizes follow their lengths.
        image_size: side of the images it was trained on; other sizes are resized.
        widths: channels of the four stages (the last one is the feature size ``F``).
    """

    def __init__(
        self,
        objects: Sequence[str] = CANVAS_OBJECTS,
        styles: Sequence[str] = CANVAS_STYLES,
        image_size: int = 32,
        widths: Sequence[int] = (32, 48, 96, 128),
    ) -> None:
        super().__init__()
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive channel counts, got {list(widths)}")
        self.objects = tuple(objects)
        self.styles = tuple(styles)
        self.image_size = int(image_size)
        self.widths = tuple(int(w) for w in widths)
        w1, w2, w3, w4 = self.widths
        self.body = nn.Sequential(
            _block(3, w1, 1),  # full resolution: fine textures (noise, dots)
            _block(w1, w1, 1),
            _block(w1, w2, 2),  # H/2
            _block(w2, w2, 1),
            _block(w2, w3, 2),  # H/4
            _block(w3, w3, 1),
            _block(w3, w4, 2),  # H/8
        )
        self.object_head = nn.Linear(w4, len(self.objects))
        self.style_head = nn.Linear(w4, len(self.styles))

    def config(self) -> dict:
        """Constructor arguments, stored with the weights."""
        return {
            "objects": list(self.objects),
            "styles": list(self.styles),
            "image_size": self.image_size,
            "widths": list(self.widths),
        }

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) in [-1, 1]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"judge expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, F)`` (used for the Fréchet distance)."""
        return self.body(self._prepare(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, 3, H, W) in [-1, 1] -> (object logits (B, n_obj), style logits (B, n_style))."""
        h = self.features(x)
        return self.object_head(h), self.style_head(h)


def save_judge(judge: CanvasJudge, path: str | Path) -> Path:
    """Write weights and config to one safetensors file; returns the path."""
    from unlearn.atomic import save_safetensors

    path = save_safetensors(
        judge.state_dict(), path, {"format": _FORMAT, "config": json.dumps(judge.config())}, what="judge"
    )
    logger.info("saved judge to %s", path)
    return path


def load_judge(
    path: str | Path,
    expected_objects: Sequence[str] | None = None,
    expected_styles: Sequence[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> CanvasJudge:
    """Load a judge in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a judge checkpoint (corrupt, wrong format, wrong
            tensors), or its concept lists differ from ``expected_objects`` /
            ``expected_styles`` (the message shows both lists).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path), device=str(map_location))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"judge checkpoint {path} is corrupt or not a safetensors file: {err}") from err
    if metadata.get("format") != _FORMAT or "config" not in metadata:
        raise ValueError(f"{path} is not a canvas judge checkpoint (metadata format {metadata.get('format')!r})")
    try:
        config = json.loads(metadata["config"])
        judge = CanvasJudge(**config)
        judge.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"judge checkpoint {path} does not match the CanvasJudge architecture: {err}") from err
    checks = (("objects", expected_objects, judge.objects), ("styles", expected_styles, judge.styles))
    for kind, expected, found in checks:
        if expected is not None and tuple(expected) != found:
            raise ValueError(
                f"judge {path} was trained on a different canvas: its {kind} are {list(found)}, "
                f"expected {list(expected)}"
            )
    return judge.to(map_location).eval()
