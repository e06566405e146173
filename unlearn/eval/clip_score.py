"""CLIP score of images against their prompts with open_clip, from a local weight file.

CLIPScore = 100 * max(cos(E_I(image), E_T(prompt)), 0), per image (torchmetrics' definition;
Hessel et al. 2021 use 2.5 * max(cos, 0), i.e. 0.025 times ours). The model is built with
``pretrained=None`` and its weights are read from ``checkpoint`` (an
``open_clip_pytorch_model.bin`` / ``.safetensors`` / OpenAI ``.pt`` state dict), so nothing
is downloaded. Images are preprocessed with the model's own open_clip transform (resize the
shortest side, centre crop, normalize). Erasure papers commonly report ViT-L/14 (OpenAI) on
COCO-30k prompts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearn.paths import resolve_local_file

__all__ = ["CLIPScorer", "clip_score"]

log = logging.getLogger(__name__)


def _build_model(arch: str, model_config: dict | str | None) -> nn.Module:
    import open_clip

    if model_config is None:
        if open_clip.get_model_config(arch) is None:
            raise ValueError(f"arch={arch!r} is not an open_clip model; see open_clip.list_models()")
        return open_clip.create_model(arch, pretrained=None)
    if isinstance(model_config, (str, Path)):
        path = resolve_local_file(model_config, "model_config", "an open_clip model .json")
        model_config = json.loads(path.read_text())
    cfg = dict(model_config)
    if "embed_dim" not in cfg or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ValueError("model_config needs embed_dim, vision_cfg and text_cfg (open_clip's model config layout)")
    return open_clip.CLIP(**cfg)


class CLIPScorer(nn.Module):
    """open_clip model + tokenizer + preprocessing; ``scorer(images, prompts) -> (B,)`` scores.

    Args:
        checkpoint: local weights of the whole CLIP model (required: random weights give
            meaningless scores).
        arch: open_clip model name (default ``"ViT-L-14"``, OpenAI's CLIP ViT-L/14 layout).
        model_config: an open_clip model config (dict or .json path) used instead of ``arch``.
    """

    def __init__(self, checkpoint: str, arch: str = "ViT-L-14", model_config: dict | str | None = None):
        super().__init__()
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer

        file = resolve_local_file(checkpoint, "checkpoint", "an open_clip weight file (.bin, .safetensors or .pt)")
        self.model = _build_model(arch, model_config)
        try:
            open_clip.load_checkpoint(self.model, str(file), strict=True)
        except RuntimeError as err:  # shape or key mismatch
            name = arch if model_config is None else "model_config"
            raise ValueError(f"checkpoint={str(file)!r} does not fit {name}: {str(err).splitlines()[0]}") from err
        self.model.eval().requires_grad_(False)
        # create_model sets the full preprocessing; a model built from a config dict has the
        # size only, and open_clip's defaults (OpenAI mean/std, bicubic, shortest side) fill in.
        pre = open_clip.get_model_preprocess_cfg(self.model)
        self.transform = open_clip.image_transform(
            pre["size"],
            is_train=False,
            mean=pre.get("mean"),
            std=pre.get("std"),
            resize_mode=pre.get("resize_mode"),
            interpolation=pre.get("interpolation"),
        )
        self.tokenizer = SimpleTokenizer(context_length=self.model.context_length)
        self.checkpoint = str(file)
        self.arch = arch if model_config is None else "custom"
        log.info("CLIP score model %s from %s", self.arch, file)

    def _pixels(self, images: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(images, torch.Tensor):  # (B, 3, H, W) in [-1, 1]
            arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
            images = [Image.fromarray(a.numpy()) for a in arr]
        pil = [
            Image.open(i).convert("RGB")
            if isinstance(i, (str, Path))
            else (i.convert("RGB") if hasattr(i, "convert") else Image.fromarray(np.asarray(i)))
            for i in images
        ]
        return torch.stack([self.transform(p) for p in pil])  # (B, 3, S, S)

    @torch.no_grad()
    def forward(self, images: Any, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP scores (B,) for images (paths, PIL images or a (B, 3, H, W) tensor in [-1, 1])."""
        device = next(self.model.parameters()).device
        pixels = self._pixels(images).to(device)
        if len(prompts) != pixels.shape[0]:
            raise ValueError(f"got {pixels.shape[0]} images but {len(prompts)} prompts")
        image_features = self.model.encode_image(pixels, normalize=True)  # (B, E)
        text_features = self.model.encode_text(self.tokenizer(list(prompts)).to(device), normalize=True)  # (B, E)
        return 100 * (image_features * text_features).sum(-1).clamp(min=0)

    @torch.no_grad()
    def similarities(self, images: Any, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities (B, T) of every image with every text (zero-shot classification)."""
        device = next(self.model.parameters()).device
        image_features = self.model.encode_image(self._pixels(images).to(device), normalize=True)  # (B, E)
        text_features = self.model.encode_text(self.tokenizer(list(texts)).to(device), normalize=True)  # (T, E)
        return image_features @ text_features.T


def clip_score(
    images: Any,
    prompts: Sequence[str],
    checkpoint: str,
    arch: str = "ViT-L-14",
    model_config: dict | str | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Mean and per-image CLIP scores, with the model and weights they came from."""
    scorer = CLIPScorer(checkpoint, arch, model_config)
    items = list(images) if not isinstance(images, torch.Tensor) else images
    scores = torch.cat(
        [scorer(items[i : i + batch_size], prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    )
    return {
        "clip_score": float(scores.mean()) if len(scores) else 0.0,
        "definition": "100 * max(cos, 0)",
        "arch": scorer.arch,
        "checkpoint": scorer.checkpoint,
        "scores": [float(s) for s in scores],
    }
