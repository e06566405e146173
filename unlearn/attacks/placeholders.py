"""Placeholders: the words an attack writes where its tokens go, found in token ids and in text.

A tokenizer spells the placeholder as one token (CLIP's BPE: ``sks</w>``) or as a span of
several (T5's sentencepiece: e.g. ``▁s k s``). `find_spans` finds the spans in rows of token ids;
`splice` puts one vector where a span of n tokens stood and shifts the rest of the row left by
n − 1, filling its end with padding, so that the row is what a tokenizer with a one-token
placeholder would give. `write_out` replaces the placeholder words of a text by the text of hard
tokens, for an encoder that does not read the tokens' vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

__all__ = ["PLACEHOLDER", "count_words", "find_spans", "splice", "with_placeholders", "write_out"]

# A single CLIP BPE token that ordinary prompts do not contain (DreamBooth's rare identifier).
PLACEHOLDER = "sks"

# CLIP's BPE cuts text into runs of letters, so "sks," and "(sks" hold the placeholder and "sksa" does not.
_LETTER = r"[^\W\d_]"
_WORD = rf"(?<!{_LETTER}){PLACEHOLDER}(?!{_LETTER})"
_WORD_PATTERN = re.compile(_WORD, re.IGNORECASE)
_RUN_PATTERN = re.compile(rf"{_WORD}(?:\s+{_WORD})*", re.IGNORECASE)  # placeholders side by side

Span = tuple[int, int]  # (start, length) in a row of token ids


def with_placeholders(prompt: str, count: int, position: str = "prefix") -> str:
    """``prompt`` with ``count`` placeholder words before it (``prefix``) or after it (``suffix``)."""
    words = " ".join([PLACEHOLDER] * count)
    if not count:
        return prompt
    return f"{words} {prompt}" if position == "prefix" else f"{prompt} {words}"


def find_spans(
    ids: torch.Tensor,
    spellings: Sequence[Sequence[int]],
    continues_word: Callable[[int], bool] | None = None,
) -> list[list[Span]]:
    """The placeholders of each row of ``ids`` (B, L), left to right: (start, length) spans.

    ``spellings``: the placeholder's token ids as its tokenizer writes it (one sequence, or one per
    place in a text where they differ). ``continues_word(id)``: whether a token after a span
    of several tokens goes on with the same word (``sksa``), which then is no placeholder.
    """
    found: list[list[Span]] = [[] for _ in range(ids.shape[0])]
    for spelling in spellings:
        n = len(spelling)
        if n > ids.shape[1]:
            continue
        pattern = torch.tensor(list(spelling), dtype=ids.dtype, device=ids.device)
        hits = (ids.unfold(1, n, 1) == pattern).all(dim=-1)  # (B, L - n + 1)
        for row, start in hits.nonzero().tolist():
            end = start + n
            if n > 1 and continues_word is not None and end < ids.shape[1] and continues_word(int(ids[row, end])):
                continue
            found[row].append((start, n))
    return [_apart(spans) for spans in found]


def _apart(spans: list[Span]) -> list[Span]:
    """Spans that do not overlap, the earliest (and at one start the longest) first."""
    kept: list[Span] = []
    for start, n in sorted(spans, key=lambda s: (s[0], -s[1])):
        if not kept or start >= kept[-1][0] + kept[-1][1]:
            kept.append((start, n))
    return kept


def splice(row: torch.Tensor, spans: Sequence[Span], vectors: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """``row`` (L, D) with ``vectors[k]`` (K, D) at the k-th span's first position and the span's
    other n − 1 positions removed: the rest of the row moves left and ``pad`` (D,) fills its end.

    The output (L, D) keeps the gradients of ``row`` and ``vectors``.
    """
    parts, end = [], 0
    for (start, n), vector in zip(spans, vectors):
        parts += [row[end:start], vector[None]]
        end = start + n
    parts.append(row[end:])
    removed = sum(n - 1 for _, n in spans)
    if removed:
        if pad is None:
            raise ValueError("a placeholder of several tokens was removed but the tokenizer has no padding token")
        parts.append(pad.expand(removed, -1))
    return torch.cat(parts)


def count_words(text: str) -> int:
    """How many placeholder words ``text`` holds."""
    return len(_WORD_PATTERN.findall(text))


def write_out(text: str, ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> str:
    """``text`` with its k-th placeholder word standing for ``ids[k]``, each run of placeholders
    side by side replaced by ``decode`` of its ids: the text a user would type for the prompt."""
    count = count_words(text)
    if count and count != len(ids):
        raise ValueError(f"a prompt holds [{count}] placeholders ({PLACEHOLDER!r}); the attack has {len(ids)}")
    found = iter(ids)

    def decoded(run: re.Match) -> str:
        return decode([next(found) for _ in range(count_words(run.group()))])

    return _RUN_PATTERN.sub(decoded, text)
