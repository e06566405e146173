"""T5 encoder (transformers `T5EncoderModel`) as SD3 and Flux use it.

``forward(text) -> (B, max_length, d_model)``: the last hidden state (after T5's final RMS
norm) of prompts padded to ``max_length`` with ``<pad>`` and ended by ``</s>``, without an
attention mask, as ``StableDiffusion3Pipeline._get_t5_prompt_embeds`` computes it (SD3: 256
tokens of T5-XXL, 4096 channels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.paths import resolve_local_dir
from unlearn.single_file import fallback_folder, holds, safetensors_keys

from .base import AbstractEmbModel
from .ldm_text import t5_from_single_file

__all__ = ["T5TextEmbedder"]

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


class T5TextEmbedder(AbstractEmbModel):
    """Tokenize prompts and encode them with a T5 encoder.

    Args:
        pretrained_path: a local diffusers or transformers folder (never a hub id), or a single
            checkpoint file (see ``single_file_config``).
        subfolder: the encoder's subfolder (SD3: ``"text_encoder_3"``); its tokenizer is the
            matching ``tokenizer*/`` folder (``tokenizer_3``) unless ``tokenizer_path`` is given.
        config: ``T5Config`` kwargs for a random (tiny) encoder; then ``tokenizer_path`` is needed.
        tokenizer_path: a local tokenizer folder.
        max_length: prompts are padded / truncated to this many tokens (SD3: 256).
        freeze: ``requires_grad=False`` and eval mode for the encoder.
        single_file_config: when ``pretrained_path`` is a single checkpoint file, a local diffusers
            folder holding ``<subfolder>/config.json`` and the tokenizer. The encoder's weights come
            from the file when it has them (SD3 files with ``text_encoders.t5xxl.*``), else from this
            folder, which then holds them (Flux.1 and most SD3 files).
    """

    def __init__(
        self,
        pretrained_path: str | None = None,
        subfolder: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        max_length: int = 256,
        freeze: bool = True,
        single_file_config: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        if (pretrained_path is None) == (config is None):
            raise ValueError("T5TextEmbedder: pass exactly one of pretrained_path (a local folder) or config")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length: expected a positive number of tokens, got {max_length!r}")
        self.max_length = max_length
        if config is not None:
            self.transformer = T5EncoderModel(T5Config(**dict(config)))
        elif Path(pretrained_path).expanduser().is_file():
            if holds(safetensors_keys(pretrained_path, "pretrained_path"), "t5"):
                self.transformer = t5_from_single_file(pretrained_path, single_file_config, subfolder)
            else:  # a file without T5 (Flux.1, most SD3 files): the folder has it
                folder = fallback_folder(pretrained_path, single_file_config, subfolder, "T5 encoder")
                self.transformer = self._from_folder(str(folder), subfolder)
            pretrained_path = single_file_config  # the tokenizer sits beside the encoder's config
        else:
            self.transformer = self._from_folder(pretrained_path, subfolder)
        self.tokenizer = self._build_tokenizer(pretrained_path, tokenizer_path, subfolder)
        if len(self.tokenizer) > self.transformer.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the T5 encoder's vocab_size is "
                f"{self.transformer.config.vocab_size}; token ids would fall outside the embedding table"
            )
        if freeze:
            self.transformer.eval()
            self.transformer.requires_grad_(False)

    @staticmethod
    def _from_folder(pretrained_path: str, subfolder: str | None) -> nn.Module:
        from transformers import T5EncoderModel

        root = resolve_local_dir(pretrained_path, "pretrained_path", subfolder)
        logger.info("loading T5EncoderModel from %s (subfolder %s)", root, subfolder)
        return T5EncoderModel.from_pretrained(str(root), subfolder=subfolder or "", local_files_only=True)

    @staticmethod
    def _build_tokenizer(pretrained_path: str | None, tokenizer_path: str | None, subfolder: str | None) -> nn.Module:
        from transformers import T5TokenizerFast

        if tokenizer_path is not None:
            folder = resolve_local_dir(tokenizer_path, "tokenizer_path")
        elif pretrained_path is not None:
            root = Path(pretrained_path).expanduser()
            candidates = [root / subfolder.replace("text_encoder", "tokenizer"), root / subfolder] if subfolder else []
            folder = next(
                (c for c in [*candidates, root] if any((c / n).is_file() for n in _TOKENIZER_FILES)),
                None,
            )
            if folder is None:
                tried = ", ".join(str(c) for c in [*candidates, root])
                raise FileNotFoundError(f"pretrained_path: no T5 tokenizer (tokenizer.json or spiece.model) in {tried}")
        else:
            raise ValueError("T5TextEmbedder: a config-built encoder needs tokenizer_path (a local tokenizer folder)")
        return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)

    def tokenize(self, text: Sequence[str]) -> torch.Tensor:
        """Token ids (B, max_length): ``</s>`` appended, padded with ``<pad>``, truncated."""
        ids = self.tokenizer(
            list(text),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        return ids.to(self.transformer.device)

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        if isinstance(text, str):
            text = [text]
        return self.transformer(self.tokenize(text))[0]  # (B, max_length, d_model)
