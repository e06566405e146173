"""Adversarial tokens inside prompts, for any text conditioner: placeholders and their vectors.

An attack writes a prompt with placeholder words (``PLACEHOLDER``, one BPE token each) where
its tokens go, e.g. ``"sks sks sks sks sks an outlined circle"``. `TokenInjection` hooks the
token-embedding table of every text embedder of a `GeneralConditioner` and replaces the
embedding of the k-th placeholder of each prompt by the attack's k-th vector, before position
embeddings and the transformer: the text encoders themselves are not touched, so this works for
CLIP, OpenCLIP and every model whose conditioner embeds token ids (SD 1.x/2.x, SDXL's two
encoders, the toy model). A hard token (a row of the embedding table) injected this way gives
exactly what the prompt with that token written out gives. An encoder whose tokenizer splits
the placeholder into several tokens (T5's sentencepiece, in SD3 and Flux) cannot be attacked
this way: it is left out with a warning and reads the placeholder words as text.

Vectors are given per embedder (each has its own table), as `InjectedTokens`: hard attacks give
token ids, which `vectors_for` turns into each embedder's rows; soft attacks give the vectors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "PLACEHOLDER",
    "InjectedTokens",
    "TextEncoderAccess",
    "TokenInjection",
    "batched_tokens",
    "injected",
    "text_encoders",
    "with_placeholders",
]

# A single CLIP BPE token that ordinary prompts do not contain (DreamBooth's rare identifier).
PLACEHOLDER = "sks"


def with_placeholders(prompt: str, count: int, position: str = "prefix") -> str:
    """``prompt`` with ``count`` placeholder words before it (``prefix``) or after it (``suffix``)."""
    words = " ".join([PLACEHOLDER] * count)
    if not count:
        return prompt
    return f"{words} {prompt}" if position == "prefix" else f"{prompt} {words}"


class TextEncoderAccess:
    """What attacks need of one text embedder: its tokenizer and its token-embedding table."""

    def __init__(self, embedder: nn.Module):
        table = _token_embedding(embedder)
        if table is None or not hasattr(embedder, "tokenize"):
            raise ValueError(f"{type(embedder).__name__} embeds no token ids (no tokenizer / token embedding)")
        self.embedder = embedder
        self.table: nn.Embedding = table
        pieces = self.token_ids(PLACEHOLDER)
        if len(pieces) != 1:
            raise ValueError(
                f"{type(embedder).__name__}: the placeholder {PLACEHOLDER!r} is {len(pieces)} tokens in its tokenizer, "
                "so adversarial tokens cannot stand at its place"
            )
        self.placeholder_id = pieces[0]

    @property
    def vocab_size(self) -> int:
        return self.table.num_embeddings

    @property
    def weight(self) -> torch.Tensor:
        """(V, D) the embedding table."""
        return self.table.weight

    @property
    def special_ids(self) -> list[int]:
        """The start / end / padding token ids, which no attack should pick as one of its tokens."""
        return sorted(_special_ids(self.embedder))

    def placeholders_in(self, text: str) -> int:
        """How many placeholders survive tokenizing ``text`` (truncation to the max length drops some)."""
        return int((self.embedder.tokenize([text])[0] == self.placeholder_id).sum())

    def token_ids(self, text: str) -> list[int]:
        """The ids of ``text``'s tokens, without the start / end / padding tokens."""
        ids = self.embedder.tokenize([text])[0].tolist()
        special = _special_ids(self.embedder)
        return [i for i in ids if i not in special]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (BPE words joined; may re-tokenize differently)."""
        tokenizer = self.embedder.tokenizer
        return tokenizer.decode(list(ids)).strip()


def _token_embedding(embedder: nn.Module) -> nn.Embedding | None:
    transformer = getattr(embedder, "transformer", None)  # CLIPTextEmbedder, T5TextEmbedder (transformers)
    if transformer is not None:
        table = transformer.get_input_embeddings() if hasattr(transformer, "get_input_embeddings") else None
        return table if isinstance(table, nn.Embedding) else None
    model = getattr(embedder, "model", None)  # OpenCLIPTextEmbedder
    return getattr(model, "token_embedding", None) if model is not None else None


def _special_ids(embedder: nn.Module) -> set[int]:
    tokenizer = embedder.tokenizer
    ids = {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    encoder = getattr(tokenizer, "encoder", {})  # open_clip's SimpleTokenizer
    ids |= {encoder.get(t) for t in ("<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>")}
    ids |= {0}  # open_clip pads with 0
    return {i for i in ids if i is not None}


def text_encoders(conditioner: nn.Module) -> list[TextEncoderAccess]:
    """Every embedder of ``conditioner`` that embeds token ids, in order."""
    found = []
    for embedder in getattr(conditioner, "embedders", []):
        if _token_embedding(embedder) is not None and hasattr(embedder, "tokenize"):
            try:
                found.append(TextEncoderAccess(embedder))
            except ValueError as err:  # e.g. T5's sentencepiece splits the placeholder word
                log.warning("%s; that encoder reads the prompt with the placeholder words and is not attacked", err)
    if not found:
        raise ValueError("the model's conditioner has no text encoder with token embeddings to attack")
    return found


@dataclass
class InjectedTokens:
    """The tokens an attack puts at the placeholders: ``ids`` (K,) hard tokens, or ``vectors``
    {encoder index: (K, D)} soft ones, or per-prompt vectors {index: (B, K, D)}."""

    ids: list[int] | None = None
    vectors: Mapping[int, torch.Tensor] | None = None

    def vectors_for(self, index: int, access: TextEncoderAccess) -> torch.Tensor:
        if self.vectors is not None:
            return self.vectors[index]
        ids = torch.tensor(self.ids, dtype=torch.long, device=access.weight.device)
        return access.weight[ids]  # (K, D)


class TokenInjection:
    """Replace the embedding of each prompt's k-th placeholder by the k-th injected vector.

    Use as a context manager around any call that runs the conditioner; the vectors may carry
    gradients (soft prompts). Prompts without placeholders are left as they are. While vectors
    that need gradients are injected, frozen embedders (``is_trainable: false``, which the
    conditioner runs under ``no_grad``) are run with gradients too, so that they reach the
    vectors; the embedders' own weights stay frozen, and ``is_trainable`` is restored on exit.
    """

    def __init__(self, encoders: Sequence[TextEncoderAccess], tokens: InjectedTokens):
        self.encoders = list(encoders)
        self.tokens = tokens
        self._handles: list = []
        self._unfrozen: list[nn.Module] = []

    def _hook(self, index: int, access: TextEncoderAccess):
        def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
            ids = args[0]  # (B, L)
            mask = ids == access.placeholder_id  # (B, L)
            if not bool(mask.any()):
                return output
            vectors = self.tokens.vectors_for(index, access).to(output.dtype)  # (K, D) or (B, K, D)
            counts = mask.sum(dim=1)
            k = vectors.shape[-2]
            if bool((counts[counts > 0] != k).any()):
                raise ValueError(f"a prompt holds {counts.tolist()} placeholders ({PLACEHOLDER!r}); the attack has {k}")
            if vectors.ndim == 2:
                vectors = vectors.expand(ids.shape[0], -1, -1)  # (B, K, D)
            rows = mask.any(dim=1)
            out = output.clone()
            out[mask] = vectors[rows].reshape(-1, vectors.shape[-1])  # row-major: each prompt's k-th in order
            return out

        return hook

    def __enter__(self) -> TokenInjection:
        for index, access in enumerate(self.encoders):
            self._handles.append(access.table.register_forward_hook(self._hook(index, access)))
        vectors = self.tokens.vectors or {}
        if any(torch.is_tensor(v) and v.requires_grad for v in vectors.values()):
            for access in self.encoders:
                if getattr(access.embedder, "is_trainable", True) is False:
                    access.embedder.is_trainable = True
                    self._unfrozen.append(access.embedder)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for embedder in self._unfrozen:
            embedder.is_trainable = False
        self._unfrozen.clear()


def batched_tokens(
    per_row: Sequence[InjectedTokens | None], encoders: Sequence[TextEncoderAccess]
) -> InjectedTokens | None:
    """One `InjectedTokens` for a batch of prompts with their own tokens (None: a row without
    placeholders): per encoder, (B, K, D) vectors, zeros for the rows without."""
    present = [t for t in per_row if t is not None]
    if not present:
        return None
    vectors = {}
    for index, access in enumerate(encoders):
        rows = [None if t is None else t.vectors_for(index, access) for t in per_row]
        k, d = next(r for r in rows if r is not None).shape[-2:]
        if any(r is not None and r.shape[-2:] != (k, d) for r in rows):
            raise ValueError("batched_tokens: the prompts' token counts differ; batch them separately")
        vectors[index] = torch.stack([access.weight.new_zeros(k, d) if r is None else r for r in rows])
    return InjectedTokens(vectors=vectors)


@contextlib.contextmanager
def injected(conditioner: nn.Module, tokens: InjectedTokens | None) -> Iterator[None]:
    """`TokenInjection` on every text encoder of ``conditioner``; a no-op for ``tokens=None``."""
    if tokens is None:
        yield
        return
    with TokenInjection(text_encoders(conditioner), tokens):
        yield
