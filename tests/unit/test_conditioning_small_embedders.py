"""ClassEmbedder and SizeConditionEmbedder."""

from __future__ import annotations

import pytest
import torch

from unlearn.conditioning import ClassEmbedder, SizeConditionEmbedder


def test_class_embedder_vector_and_sequence():
    torch.manual_seed(0)
    emb = ClassEmbedder(n_classes=4, embed_dim=6)
    out = emb(torch.tensor([3, 0]))
    assert out.shape == (2, 6)
    torch.testing.assert_close(out, emb.embedding.weight[[3, 0]])
    seq = ClassEmbedder(n_classes=4, embed_dim=6, add_sequence_dim=True)
    assert seq([1, 2]).shape == (2, 1, 6)
    with pytest.raises(ValueError, match="class label 4"):
        emb(torch.tensor([4]))


def test_size_embedder_returns_raw_floats():
    emb = SizeConditionEmbedder()
    assert emb.output_key == "time_ids"
    out = emb(torch.tensor([[1024, 768], [512, 256]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[1024.0, 768.0], [512.0, 256.0]]))
    torch.testing.assert_close(emb([(64, 32)]), torch.tensor([[64.0, 32.0]]))
    torch.testing.assert_close(emb(torch.tensor([6.0, 2.5])), torch.tensor([[6.0], [2.5]]))  # aesthetic score
    with pytest.raises(ValueError, match="shape"):
        emb(torch.zeros(2, 2, 2))
