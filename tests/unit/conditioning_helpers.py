"""Tiny model configs shared by the conditioning tests (not a test module)."""

from __future__ import annotations

import pytest

# transformers CLIPTextConfig kwargs; vocab_size must cover the CLIP tokenizer (49408).
TINY_CLIP = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 16,
}

# open_clip model config layout (embed_dim + text_cfg).
TINY_OPENCLIP = {
    "embed_dim": 16,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}


@pytest.fixture(autouse=True)
def _isolated_tokenizer_cache(tmp_path_factory, monkeypatch):
    """Keep the offline tokenizer cache out of the home folder (shared by a session)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))
