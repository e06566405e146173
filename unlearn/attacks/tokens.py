"""Adversarial tokens inside prompts, for any text conditioner: placeholders and their vectors.

An attack writes a prompt with placeholder words (``PLACEHOLDER``) where its tokens go, e.g.
``"sks sks sks sks sks an outlined circle"``. `TokenInjection` hooks the token-embedding table
of every text embedder of a `GeneralConditioner` and puts the attack's k-th vector where the
k-th placeholder of each prompt stands, before position embeddings and the transformer: the text
encoders themselves are not touched, so this works for CLIP, OpenCLIP, T5 and every model whose
conditioner embeds token ids (SD 1.x/2.x, SDXL's two encoders, SD3's three, Flux's two, the toy
model).

Where a tokenizer spells the placeholder as several tokens (T5's sentencepiece: ``▁s k s``), the
vector takes the span's first position and the span's other tokens are removed, the rest of the
row shifting left and padding filling its end (`unlearn.attacks.placeholders.splice`): the
embeddings are then what a tokenizer with a one-token placeholder would give. That is exact for
an encoder whose output depends on the ids through the embedding table alone: T5 as SD3 and Flux
call it (`T5TextEmbedder`: no attention mask, every position attended, padding included;
relative position bias, no pooling at the end-of-text token). Other encoders that split the
placeholder are refused with an error, and so is a prompt where such a tokenizer finds another
number of placeholders than the text holds (``(sks``, glued to the character before it).

Vectors are given per embedder (each has its own table), as `InjectedTokens`: soft attacks give
vectors for every encoder; hard attacks give token ids of the first encoder's vocabulary. An
encoder that shares that vocabulary (SDXL's and SD3's CLIP pair) takes the ids' rows of its
table, so a hard token injected gives exactly what the prompt with that token written out gives.
An encoder of another vocabulary (T5 beside CLIP) cannot read CLIP ids: it reads the tokens as
text, each run of placeholders replaced by the decoded tokens (`placeholders.write_out`), which is
what it gives for the adversarial prompt typed into the real pipeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unlearn.attacks.placeholders import (
    PLACEHOLDER,
    Span,
    count_words,
    find_spans,
    splice,
    with_placeholders,
    write_out,
)

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

# A common word the placeholder is written beside, to see how the tokenizer spells it at the
# start of a text and after a space (sentencepiece may spell a word differently at the start).
_NEIGHBOUR = "a"
# Encoders whose output depends on the token ids through the embedding table alone (no attention
# mask from the tokenizer, no pooling at the end-of-text position): a span of placeholder tokens
# can be cut out of their embeddings exactly.
_SPAN_EXACT_MODELS = ("t5", "mt5", "umt5")


class TextEncoderAccess:
    """What attacks need of one text embedder: its tokenizer, its token-embedding table and how
    its tokenizer spells the placeholder."""

    def __init__(self, embedder: nn.Module):
        table = _token_embedding(embedder)
        name = type(embedder).__name__
        if table is None or not hasattr(embedder, "tokenize"):
            raise ValueError(f"{name} embeds no token ids (no tokenizer / token embedding)")
        self.embedder = embedder
        self.table: nn.Embedding = table
        self.spellings = self._spellings()
        longest = max(len(s) for s in self.spellings)
        if longest > 1:
            model_type = getattr(getattr(getattr(embedder, "transformer", None), "config", None), "model_type", None)
            if model_type not in _SPAN_EXACT_MODELS:
                raise ValueError(
                    f"{name}: the placeholder {PLACEHOLDER!r} is {longest} tokens in its tokenizer, and cutting the "
                    f"extra ones out is exact only for encoders that read the ids through the embedding table "
                    f"alone ({', '.join(_SPAN_EXACT_MODELS)}); this one cannot be attacked"
                )
            if self.pad_id is None:
                raise ValueError(f"{name}: its tokenizer has no padding token to fill the removed placeholder tokens")

    def _spellings(self) -> tuple[tuple[int, ...], ...]:
        """The placeholder's token ids at the start of a text and after a word (one entry when equal)."""
        word = self.token_ids(_NEIGHBOUR)
        before = self.token_ids(with_placeholders(_NEIGHBOUR, 1, "prefix"))
        after = self.token_ids(with_placeholders(_NEIGHBOUR, 1, "suffix"))
        n = len(word)
        if before[len(before) - n :] != word or after[:n] != word or len(before) <= n or len(after) <= n:
            raise ValueError(
                f"{type(self.embedder).__name__}: the placeholder {PLACEHOLDER!r} changes how its tokenizer "
                f"spells the words beside it, so adversarial tokens cannot stand at its place"
            )
        return tuple(dict.fromkeys([tuple(before[: len(before) - n]), tuple(after[n:])]))

    @property
    def vocab_size(self) -> int:
        return self.table.num_embeddings

    @property
    def weight(self) -> torch.Tensor:
        """(V, D) the embedding table."""
        return self.table.weight

    @property
    def placeholder_id(self) -> int:
        """The placeholder's token, for a tokenizer that spells it as one."""
        if len(self.spellings) != 1 or len(self.spellings[0]) != 1:
            raise ValueError(f"{type(self.embedder).__name__} spells {PLACEHOLDER!r} as {list(self.spellings)}")
        return self.spellings[0][0]

    @property
    def pad_id(self) -> int | None:
        return getattr(self.embedder.tokenizer, "pad_token_id", None)

    @property
    def special_ids(self) -> list[int]:
        """The start / end / padding token ids, which no attack should pick as one of its tokens."""
        return sorted(_special_ids(self.embedder))

    @property
    def banned_ids(self) -> list[int]:
        """The ids a hard attack never picks: the special tokens and a one-token placeholder."""
        return sorted({*_special_ids(self.embedder), *(s[0] for s in self.spellings if len(s) == 1)})

    def shares_vocabulary(self, other: TextEncoderAccess) -> bool:
        """Whether token ids mean the same in both tables (the CLIP family shares one BPE vocabulary)."""
        return self.vocab_size == other.vocab_size and self.spellings == other.spellings

    def placeholder_spans(self, ids: torch.Tensor) -> list[list[Span]]:
        """The (start, length) of every placeholder in each row of ``ids`` (B, L)."""
        return find_spans(ids, self.spellings, self._continues_word)

    def _continues_word(self, token_id: int) -> bool:
        # sentencepiece marks the first piece of a word with "▁"; a piece that starts with a letter goes on
        piece = self.embedder.tokenizer.convert_ids_to_tokens(token_id)
        return bool(piece) and piece[0].isalpha()

    def placeholders_in(self, text: str) -> int:
        """How many placeholders survive tokenizing ``text`` (truncation to the max length drops some)."""
        return len(self.placeholder_spans(self.embedder.tokenize([text]))[0])

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
        # T5EncoderModel's table is `shared`, but its encoder embeds through `encoder.embed_tokens`, another
        # module holding the same (tied) weight: the hook must sit on the module that runs.
        encoder = transformer.get_encoder() if hasattr(transformer, "get_encoder") else None
        for model in (encoder, transformer):
            table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
            if isinstance(table, nn.Embedding):
                return table
        return None
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
    """Every embedder of ``conditioner`` that embeds token ids, in order; a ValueError names one
    that cannot be attacked."""
    found = []
    for index, embedder in enumerate(getattr(conditioner, "embedders", [])):
        if _token_embedding(embedder) is not None and hasattr(embedder, "tokenize"):
            try:
                found.append(TextEncoderAccess(embedder))
            except ValueError as err:
                raise ValueError(f"text encoder {index} of the conditioner: {err}") from err
    if not found:
        raise ValueError("the model's conditioner has no text encoder with token embeddings to attack")
    return found


@dataclass
class InjectedTokens:
    """The tokens an attack puts at the placeholders.

    Attributes:
        ids: hard tokens of the first text encoder's vocabulary: (K,) for every prompt, or one
            (K,) per prompt (None for a prompt without placeholders).
        vectors: soft tokens {encoder index: (K, D_i)}, or per prompt {index: (B, K, D_i)}.

    An encoder named in ``vectors`` takes those; any other reads ``ids``: the rows of its table
    when it shares the first encoder's vocabulary, else the decoded tokens as text.
    """

    ids: Sequence[int] | Sequence[Sequence[int] | None] | None = None
    vectors: Mapping[int, torch.Tensor] | None = None

    def ids_per_prompt(self, batch: int) -> list[list[int] | None]:
        """``ids`` as one entry per prompt of a batch of ``batch``."""
        if self.ids is None:
            raise ValueError("the injected tokens hold no ids")
        ids = self.ids.tolist() if torch.is_tensor(self.ids) else self.ids
        if not any(i is None or not isinstance(i, int) for i in ids):
            return [list(ids)] * batch
        if len(ids) != batch:
            raise ValueError(f"the injected tokens are given for {len(ids)} prompts, the batch has {batch}")
        return [None if i is None else list(i) for i in ids]

    def rows(self, access: TextEncoderAccess, batch: int) -> torch.Tensor:
        """(B, K, D) the rows of ``ids`` in ``access``'s table; zeros for prompts without ids."""
        per_prompt = self.ids_per_prompt(batch)
        k = max((len(i) for i in per_prompt if i is not None), default=0)
        index = torch.tensor([i or [0] * k for i in per_prompt], dtype=torch.long, device=access.weight.device)
        keep = torch.tensor([i is not None for i in per_prompt], device=access.weight.device)
        return access.weight[index] * keep[:, None, None]


class TokenInjection:
    """Put the k-th injected token where each prompt's k-th placeholder stands.

    Use as a context manager around any call that runs the conditioner; the vectors may carry
    gradients (soft prompts). Prompts without placeholders are left as they are. While vectors
    that need gradients are injected, the frozen embedders (``is_trainable: false``, which the
    conditioner runs under ``no_grad``) that take them are run with gradients too, so that they
    reach the vectors; the embedders' own weights stay frozen, and ``is_trainable`` is restored on
    exit. Encoders that read hard tokens as text run as they are.
    """

    def __init__(self, encoders: Sequence[TextEncoderAccess], tokens: InjectedTokens):
        self.encoders = list(encoders)
        self.tokens = tokens
        self._handles: list = []
        self._unfrozen: list[nn.Module] = []

    def _reads(self, index: int, access: TextEncoderAccess) -> str:
        """How encoder ``index`` takes the tokens: ``vectors``, ``rows`` of the ids, or ``text``."""
        if self.tokens.vectors is not None and index in self.tokens.vectors:
            return "vectors"
        if self.tokens.ids is None:
            raise ValueError(
                f"the injected tokens give no vectors for text encoder {index} ({type(access.embedder).__name__})"
            )
        return "rows" if access.shares_vocabulary(self.encoders[0]) else "text"

    def _embedding_hook(self, index: int, access: TextEncoderAccess, reads: str):
        def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
            ids = args[0]  # (B, L)
            spans = access.placeholder_spans(ids)
            if not any(spans):
                return output
            batch = ids.shape[0]
            vectors = self.tokens.vectors[index] if reads == "vectors" else self.tokens.rows(access, batch)
            vectors = vectors.to(output.dtype)  # (K, D) or (B, K, D)
            k = vectors.shape[-2]
            counts = [len(s) for s in spans]
            if any(c not in (0, k) for c in counts):
                raise ValueError(f"a prompt holds {counts} placeholders ({PLACEHOLDER!r}); the attack has {k}")
            if vectors.ndim == 2:
                vectors = vectors.expand(batch, -1, -1)  # (B, K, D)
            pad = module.weight[access.pad_id].to(output.dtype) if access.pad_id is not None else None
            return torch.stack([splice(row, s, v, pad) if s else row for row, s, v in zip(output, spans, vectors)])

        return hook

    @staticmethod
    def _spelling_check(access: TextEncoderAccess):
        """Refuse prompts where a tokenizer that spells the placeholder as several tokens finds
        another count of them than the text holds (``(sks``: no word-initial piece)."""

        def hook(module: nn.Module, args) -> None:
            prompts = [args[0]] if isinstance(args[0], str) else list(args[0])
            found = [len(s) for s in access.placeholder_spans(access.embedder.tokenize(prompts))]
            written = [count_words(t) for t in prompts]
            if found != written:
                raise ValueError(
                    f"{type(module).__name__} finds {found} placeholders ({PLACEHOLDER!r}) where the prompts hold "
                    f"{written}: write each placeholder as a word of its own, within the max length"
                )

        return hook

    def _text_hook(self):
        decode = self.encoders[0].decode  # the ids are the first encoder's tokens

        def hook(module: nn.Module, args):
            texts, *rest = args
            prompts = [texts] if isinstance(texts, str) else list(texts)
            ids = self.tokens.ids_per_prompt(len(prompts))
            written = [t if i is None else write_out(t, i, decode) for t, i in zip(prompts, ids)]
            return (written[0] if isinstance(texts, str) else written, *rest)

        return hook

    def __enter__(self) -> TokenInjection:
        vectors = self.tokens.vectors or {}
        for index, access in enumerate(self.encoders):
            reads = self._reads(index, access)
            if reads == "text":
                self._handles.append(access.embedder.register_forward_pre_hook(self._text_hook()))
                continue
            self._handles.append(access.table.register_forward_hook(self._embedding_hook(index, access, reads)))
            if any(len(spelling) > 1 for spelling in access.spellings):
                self._handles.append(access.embedder.register_forward_pre_hook(self._spelling_check(access)))
            wants_grad = reads == "vectors" and torch.is_tensor(vectors[index]) and vectors[index].requires_grad
            if wants_grad and getattr(access.embedder, "is_trainable", True) is False:
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


def batched_tokens(per_prompt: Sequence[InjectedTokens | None]) -> InjectedTokens | None:
    """One `InjectedTokens` for a batch of prompts with their own tokens (None: a prompt without
    placeholders): hard tokens as ids per prompt; soft ones as (B, K, D) vectors per encoder,
    zeros for the prompts without."""
    present = [t for t in per_prompt if t is not None]
    if not present:
        return None
    hard = [t.vectors is None for t in present]
    if all(hard):
        if len({len(t.ids) for t in present}) != 1:
            raise ValueError("batched_tokens: the prompts' token counts differ; batch them separately")
        return InjectedTokens(ids=[None if t is None else list(t.ids) for t in per_prompt])
    if any(hard) or any(set(t.vectors) != set(present[0].vectors) for t in present):
        raise ValueError("batched_tokens: the prompts mix hard and soft tokens; batch them separately")
    vectors = {}
    for index in present[0].vectors:
        rows = [None if t is None else t.vectors[index] for t in per_prompt]
        first = next(r for r in rows if r is not None)
        if any(r is not None and r.shape != first.shape for r in rows):
            raise ValueError("batched_tokens: the prompts' token counts differ; batch them separately")
        vectors[index] = torch.stack([first.new_zeros(first.shape) if r is None else r for r in rows])
    return InjectedTokens(vectors=vectors)


@contextlib.contextmanager
def injected(conditioner: nn.Module, tokens: InjectedTokens | None) -> Iterator[None]:
    """`TokenInjection` on every text encoder of ``conditioner``; a no-op for ``tokens=None``."""
    if tokens is None:
        yield
        return
    with TokenInjection(text_encoders(conditioner), tokens):
        yield
