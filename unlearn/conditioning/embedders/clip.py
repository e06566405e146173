"""CLIP text encoder (transformers) as used by SD 1.x and both SDXL encoders.

Layer conventions (diffusers' pipelines):

* ``"last"``: ``last_hidden_state``, i.e. the last layer after the final LayerNorm (SD 1.x).
* ``"penultimate"``: ``hidden_states[-2]``, the input of the last layer, *without* the
  final LayerNorm, as ``StableDiffusionXLPipeline.encode_prompt`` does for both encoders.
  (SD 2.x in diffusers drops the last layer from the checkpoint instead, so it uses
  ``"last"`` there.)
* ``"hidden"``: ``hidden_states[layer_idx]`` (0 = token + position embeddings), no LayerNorm.

``final_norm=True`` applies the final LayerNorm to ``"penultimate"``/``"hidden"`` outputs,
as diffusers' SD 1.x pipeline does for ``clip_skip``.

Pooled output (``return_pooled``): ``text_embeds`` (projected EOS token) with
``with_projection`` (SDXL's second encoder), else ``pooler_output`` (EOS token after the
final LayerNorm). ``pooled_only`` returns the pooled vector alone (Flux reads only that of CLIP-L).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from unlearn.paths import resolve_local_dir
from unlearn.single_file import fallback_folder, holds, safetensors_keys

from ..tokenizer import build_clip_tokenizer
from .base import AbstractEmbModel
from .ldm_text import clip_from_single_file

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPTokenizer

__all__ = ["CLIPTextEmbedder"]

logger = logging.getLogger(__name__)

_LAYERS = ("last", "penultimate", "hidden")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _sibling_tokenizer_dir(root: Path, subfolder: str | None) -> Path | None:
    """The tokenizer next to a text encoder: ``tokenizer/`` for ``text_encoder/`` etc."""
    candidates = []
    if subfolder:
        candidates.append(root / subfolder.replace("text_encoder", "tokenizer"))
        candidates.append(root / subfolder)
    candidates.append(root)
    return next((c for c in candidates if c.is_dir() and _has_tokenizer(c)), None)


class CLIPTextEmbedder(AbstractEmbModel):
    """Tokenize prompts and encode them with a transformers CLIP text model.

    Args:
        pretrained_path: local transformers/diffusers folder (never a hub id), or a single SD
            checkpoint file (see ``single_file_config``).
        config: ``CLIPTextConfig`` kwargs for a randomly initialised (tiny/toy) model.
        tokenizer_path: local tokenizer folder; default: the ``tokenizer*/`` folder next
            to the text encoder, else the offline CLIP tokenizer (`build_clip_tokenizer`).
        layer: ``"last"``, ``"penultimate"`` or ``"hidden"`` (see the module docstring).
        layer_idx: index into ``hidden_states`` for ``layer="hidden"``.
        max_length: prompts are padded / truncated to this many tokens.
        freeze: set ``requires_grad=False`` on the text model.
        return_pooled: also return the pooled vector: ``(crossattn (B, L, D), pooled)``.
        with_projection: use ``CLIPTextModelWithProjection`` (pooled = ``text_embeds``).
        subfolder: subfolder of ``pretrained_path`` (``"text_encoder"``, ``"text_encoder_2"``).
        final_norm: apply the final LayerNorm to ``penultimate``/``hidden`` outputs.
        pooled_only: return the pooled vector (B, P) alone, no tokens.
        single_file_config: when ``pretrained_path`` is a single checkpoint file
            (``.safetensors``/``.ckpt`` in the original LDM/sgm/SD3 layout), a local diffusers
            folder holding ``<subfolder>/config.json`` and the tokenizer; diffusers converts
            the text encoder's weights (CLIP, or OpenCLIP for SD 2.x / SDXL's second encoder).
            A file without text encoders (Flux.1; SD3 without CLIPs) leaves the encoder to
            this folder, which then holds its weights.
    """

    def __init__(
        self,
        pretrained_path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        layer: Literal["last", "penultimate", "hidden"] = "last",
        layer_idx: int | None = None,
        max_length: int = 77,
        freeze: bool = True,
        return_pooled: bool = False,
        with_projection: bool = False,
        subfolder: str | None = None,
        final_norm: bool = False,
        single_file_config: str | None = None,
        pooled_only: bool = False,
    ) -> None:
        super().__init__()
        if (pretrained_path is None) == (config is None):
            raise ValueError("CLIPTextEmbedder: pass exactly one of pretrained_path (a local folder) or config")
        if layer not in _LAYERS:
            raise ValueError(f"layer must be one of {_LAYERS}, got {layer!r}")
        if layer == "hidden" and layer_idx is None:
            raise ValueError("layer='hidden' needs layer_idx (an index into hidden_states)")
        self.layer = layer
        self.layer_idx = layer_idx
        self.max_length = max_length
        self.return_pooled = return_pooled or pooled_only
        self.pooled_only = pooled_only
        self.with_projection = with_projection
        self.final_norm = final_norm

        if pretrained_path is not None and Path(pretrained_path).expanduser().is_file():
            if holds(safetensors_keys(pretrained_path, "pretrained_path"), "clip"):
                self.transformer = clip_from_single_file(
                    pretrained_path, single_file_config, subfolder, with_projection
                )
            else:  # a file without text encoders (Flux.1, SD3 without CLIPs): the folder has them
                folder = fallback_folder(pretrained_path, single_file_config, subfolder, "CLIP text encoder")
                self.transformer = self._build_model(str(folder), None, subfolder, with_projection)
            pretrained_path = single_file_config  # the tokenizer sits beside the text encoder's config
        else:
            self.transformer = self._build_model(pretrained_path, config, subfolder, with_projection)
        self._check_layer_idx()
        positions = self.transformer.config.max_position_embeddings
        if not 2 <= max_length <= positions:
            raise ValueError(f"max_length must be in [2, {positions}] (the model's positions), got {max_length}")
        self.tokenizer = self._build_tokenizer(pretrained_path, tokenizer_path, subfolder)
        if len(self.tokenizer) > self.transformer.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the text model's vocab_size is "
                f"{self.transformer.config.vocab_size}; token ids would fall outside the embedding table"
            )
        if freeze:
            self.freeze()

    @staticmethod
    def _build_model(
        pretrained_path: str | None, config: dict[str, Any] | None, subfolder: str | None, with_projection: bool
    ) -> nn.Module:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        if config is not None:
            return cls(CLIPTextConfig(**config))
        root = resolve_local_dir(pretrained_path, "pretrained_path", subfolder)
        logger.info("loading %s from %s (subfolder %s)", cls.__name__, root, subfolder)
        return cls.from_pretrained(str(root), subfolder=subfolder or "", local_files_only=True)

    def _build_tokenizer(
        self, pretrained_path: str | None, tokenizer_path: str | None, subfolder: str | None
    ) -> CLIPTokenizer:
        from transformers import CLIPTokenizer

        if tokenizer_path is not None:
            folder = resolve_local_dir(tokenizer_path, "tokenizer_path")
            return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        if pretrained_path is not None:
            folder = _sibling_tokenizer_dir(Path(pretrained_path).expanduser(), subfolder)
            if folder is not None:
                return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
            logger.warning(
                "no tokenizer found next to %s; using the offline CLIP tokenizer (pass tokenizer_path to choose)",
                pretrained_path,
            )
        return build_clip_tokenizer(max_length=self.max_length)

    def _check_layer_idx(self) -> None:
        if self.layer != "hidden":
            return
        n_states = self.transformer.config.num_hidden_layers + 1
        if not -n_states <= self.layer_idx < n_states:
            raise ValueError(f"layer_idx must be in [{-n_states}, {n_states - 1}] for this model, got {self.layer_idx}")

    def freeze(self) -> None:
        """Stop gradients into the text model and put it in eval mode."""
        self.transformer.eval()
        for param in self.transformer.parameters():
            param.requires_grad = False

    @property
    def _final_layer_norm(self) -> nn.Module:
        # transformers 4.x nests the text model under .text_model; 5.x CLIPTextModel does not.
        text_model = getattr(self.transformer, "text_model", self.transformer)
        return text_model.final_layer_norm

    def tokenize(self, text: Sequence[str]) -> torch.Tensor:
        """Token ids (B, max_length), padded and truncated as SD does."""
        ids = self.tokenizer(
            list(text), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return ids.to(self.transformer.device)

    def forward(self, text: str | Sequence[str]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(text, str):
            text = [text]
        tokens = self.tokenize(text)  # (B, L)
        out = self.transformer(input_ids=tokens, output_hidden_states=self.layer != "last")
        if self.layer == "last":
            z = out.last_hidden_state  # (B, L, D)
        else:
            z = out.hidden_states[-2 if self.layer == "penultimate" else self.layer_idx]  # (B, L, D)
            if self.final_norm:
                z = self._final_layer_norm(z)
        if not self.return_pooled:
            return z
        pooled = out.text_embeds if self.with_projection else out.pooler_output  # (B, P) or (B, D)
        return pooled if self.pooled_only else (z, pooled)
