"""An offline `transformers.CLIPTokenizer` built from open_clip's bundled BPE vocabulary.

OpenAI CLIP, open_clip's ``SimpleTokenizer`` and the SD / SDXL tokenizers share one
byte-level BPE vocabulary of 49408 tokens: 256 byte symbols, the same 256 with the
end-of-word suffix ``</w>``, 48894 merges, then ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407). open_clip ships the merges as ``bpe_simple_vocab_16e6.txt.gz``;
we derive ``vocab.json`` and ``merges.txt`` from it exactly as ``SimpleTokenizer`` does,
write them once into a cache folder and load them with ``CLIPTokenizer.from_pretrained``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from unlearn.atomic import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPTokenizer

__all__ = ["CLIP_VOCAB_SIZE", "BOS_TOKEN", "EOS_TOKEN", "build_clip_tokenizer", "default_cache_dir"]

logger = logging.getLogger(__name__)

CLIP_VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"  # id 49406
EOS_TOKEN = "<|endoftext|>"  # id 49407
# SimpleTokenizer keeps the first 49152 - 256 - 2 merges of the file (its line 0 is a header).
_N_MERGES = 49152 - 256 - 2


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/unlearn/clip_tokenizer`` (``~/.cache/unlearn/clip_tokenizer``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unlearn" / "clip_tokenizer"


def _vocab_and_merges() -> tuple[list[str], list[str]]:
    """The CLIP vocabulary (index = token id) and BPE merges, from open_clip's bundled file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [BOS_TOKEN, EOS_TOKEN]
    if len(vocab) != CLIP_VOCAB_SIZE:  # the bundled file changed shape: refuse to guess
        raise ValueError(f"open_clip's BPE file gives {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def _write_files(folder: Path) -> None:
    vocab, merges = _vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    # Several processes (DDP ranks) may build the cache at once: each file is written then renamed.
    atomic_write_text(
        folder / "vocab.json",
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False),
        "tokenizer vocabulary",
    )
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n", "tokenizer merges")
    logger.info("wrote the CLIP BPE vocabulary (%d tokens) to %s", len(vocab), folder)


def _load(folder: Path, max_length: int, pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        str(folder), local_files_only=True, model_max_length=max_length, pad_token=pad_token
    )


def _is_valid(tokenizer: CLIPTokenizer) -> bool:
    return (
        len(tokenizer) == CLIP_VOCAB_SIZE
        and tokenizer.convert_tokens_to_ids(BOS_TOKEN) == CLIP_VOCAB_SIZE - 2
        and tokenizer.convert_tokens_to_ids(EOS_TOKEN) == CLIP_VOCAB_SIZE - 1
    )


def build_clip_tokenizer(
    cache_dir: str | Path | None = None,
    max_length: int = 77,
    pad_token: str = EOS_TOKEN,
) -> CLIPTokenizer:
    """Build the CLIP tokenizer offline (no hub access).

    Args:
        cache_dir: folder for ``vocab.json`` / ``merges.txt``; written once, reused after.
            Defaults to `default_cache_dir()`.
        max_length: ``model_max_length`` of the tokenizer (SD uses 77).
        pad_token: ``"<|endoftext|>"`` pads as SD 1.x's tokenizer does; ``"!"`` (id 0)
            pads as open_clip and SDXL's second tokenizer do (the pad token becomes a
            special token, so, as with SDXL's tokenizer, a literal "!" in a prompt is
            then tokenized as the pad token).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (start and end tokens), got {max_length}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        _write_files(folder)
    tokenizer = _load(folder, max_length, pad_token)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= CLIP_VOCAB_SIZE:
        raise ValueError(f"pad_token {pad_token!r} is not a token of the CLIP vocabulary")
    if not _is_valid(tokenizer):
        logger.warning("the CLIP tokenizer cache in %s is not the CLIP vocabulary; rewriting it", folder)
        _write_files(folder)
        tokenizer = _load(folder, max_length, pad_token)
    return tokenizer
