"""An offline stand-in T5 tokenizer, for random-weight and tiny T5 text encoders.

T5's real tokenizer is a SentencePiece Unigram model of 32000 pieces (plus 100 sentinel
``<extra_id_*>`` tokens) that no package here ships. Random-weight models (`scripts/
make_random_model.py --arch sd3`) and the tiny test pipelines need *a* tokenizer of the same
kind and layout, not that vocabulary: this one is a transformers `T5Tokenizer` (Unigram, ``<pad>``
0, ``</s>`` 1, ``<unk>`` 2, ``</s>`` appended, metaspace pre-tokenizer as T5's) whose pieces are
single characters, a few hundred common English words and numbered fillers up to ``vocab_size``.
It saves with ``save_pretrained`` as ``tokenizer.json``, which diffusers' SD3 pipeline and
`unlearn.conditioning.T5TextEmbedder` load alike. Real T5 weights need their own tokenizer folder.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import T5Tokenizer

__all__ = ["build_t5_tokenizer"]

_SPECIALS = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
_WORDS = (
    "a an the of in on at with and or to for from by is are this that photo picture painting drawing image "
    "style art portrait landscape cat dog car house tree sky sea city man woman person people red blue green "
    "yellow black white orange purple big small old new beautiful dark light van gogh monet picasso circle "
    "square triangle star striped dotted outlined solid sofa table street night day sun moon water mountain"
).split()


def build_t5_tokenizer(vocab_size: int = 32000, extra_ids: int = 100, max_length: int = 512) -> T5Tokenizer:
    """A T5-layout Unigram tokenizer with ``vocab_size`` pieces and ``extra_ids`` sentinels
    (``len(tokenizer) == vocab_size + extra_ids``); deterministic, built without any file."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = list(_SPECIALS)
    pieces += [("\u2581" + w, -1.0) for w in _WORDS]
    pieces += [("\u2581" + c, -4.0) for c in chars] + [(c, -5.0) for c in chars]
    pieces = list(dict(reversed(pieces)).items())[::-1]  # one score per piece (the first given)
    if vocab_size < len(pieces):
        raise ValueError(f"vocab_size: expected at least {len(pieces)} (specials, words, characters), got {vocab_size}")
    pieces += [(f"\u2581<{i}>", -20.0) for i in range(vocab_size - len(pieces))]  # fillers no text produces
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]  # T5's order: <extra_id_0> last
    return T5Tokenizer(vocab=pieces, extra_ids=extra_ids, model_max_length=max_length)
