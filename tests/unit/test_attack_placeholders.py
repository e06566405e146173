"""Placeholders in token ids and in text: spans, splicing, hard tokens written out (no model)."""

import pytest
import torch

from unlearn.attacks.placeholders import count_words, find_spans, splice, write_out

S, K, SS, A, B, PAD = 5, 6, 7, 1, 2, 0  # "▁s k s" spell the placeholder; "ss" goes on with a word


def test_spans_of_several_tokens_are_found_at_word_boundaries_only():
    ids = torch.tensor(
        [
            [S, K, S, A, S, K, S, B, PAD],  # two placeholders, the second between words
            [A, S, K, S, SS, B, PAD, PAD, PAD],  # "sksss": the word goes on, no placeholder
            [A, B, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
        ]
    )
    spans = find_spans(ids, [(S, K, S)], continues_word=lambda i: i == SS)
    assert spans == [[(0, 3), (4, 3)], [], []]
    assert find_spans(ids, [(S, K, S)])[1] == [(1, 3)]  # without the check it is taken
    # two spellings (e.g. at the start of a text and after a word): each found, none overlapping
    assert find_spans(torch.tensor([[S, K, S, K, S]]), [(S, K, S), (K, S)]) == [[(0, 3), (3, 2)]]


def test_splice_puts_one_vector_per_span_and_shifts_the_row_left():
    row = torch.arange(9.0)[:, None].expand(9, 2)  # (L, D): position i holds i
    vectors = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]], requires_grad=True)
    pad = torch.tensor([9.0, 9.0])
    out = splice(row, [(0, 3), (4, 3)], vectors, pad)
    assert out[:, 0].tolist() == [-1, 3, -2, 7, 8, 9, 9, 9, 9]  # 2 + 2 tokens removed, 4 pads at the end
    out.sum().backward()
    assert vectors.grad.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert torch.equal(
        splice(row, [(2, 1)], vectors[:1].detach(), None)[:, 0], torch.tensor([0, 1, -1, 3, 4, 5, 6, 7, 8.0])
    )
    with pytest.raises(ValueError, match="no padding token"):
        splice(row, [(0, 3)], vectors[:1], None)


def test_hard_tokens_are_written_out_run_by_run():
    def decode(ids):
        return "+".join(str(i) for i in ids)

    assert write_out("sks sks a circle sks", [1, 2, 3], decode) == "1+2 a circle 3"
    assert write_out("a (sks), SKS sksa", [4, 5], decode) == "a (4), 5 sksa"  # case and punctuation as CLIP's BPE
    assert write_out("a circle", [1], decode) == "a circle"  # no placeholder: as it is
    assert count_words("sks sks sksa asks sks.") == 3
    with pytest.raises(ValueError, match=r"holds \[1\] placeholders \('sks'\); the attack has 2"):
        write_out("sks a circle", [1, 2], decode)
