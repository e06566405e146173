"""The offline CLIP tokenizer must give open_clip's / OpenAI CLIP's token ids."""

from __future__ import annotations

import pytest

from unlearn.conditioning import build_clip_tokenizer

PROMPTS = [
    "a photo of a cat",
    "Van Gogh's Starry Night, oil on canvas!!",
    "  Multiple   spaces\tand CAPS 1234 ",
    "",
    "émigré café naïve",
    "a painting in the style of Thomas Kinkade, " * 10,  # longer than 77 tokens: truncated
]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-L-14")


def test_vocabulary_and_special_ids(tmp_path):
    tok = build_clip_tokenizer(cache_dir=tmp_path)
    assert len(tok) == 49408
    assert tok.convert_tokens_to_ids("<|startoftext|>") == 49406
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 49407
    assert tok.pad_token_id == 49407 and tok.model_max_length == 77
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_open_clip(tmp_path, open_clip_tokenizer, prompt):
    reference = open_clip_tokenizer([prompt])[0].tolist()  # pads with 0
    tok = build_clip_tokenizer(cache_dir=tmp_path)  # pads with <|endoftext|> as SD 1.x
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406
    end = reference.index(49407) + 1
    assert ids[:end] == reference[:end]
    assert ids[end:] == [49407] * (77 - end)
    assert reference[end:] == [0] * (77 - end)


def test_bang_padding_equals_open_clip_exactly(tmp_path, open_clip_tokenizer):
    # pad_token="!" (id 0) reproduces open_clip's padding; as with SDXL's tokenizer_2,
    # "!" then becomes a special token, so use it only for prompts without "!".
    tok = build_clip_tokenizer(cache_dir=tmp_path, pad_token="!")
    for prompt in ["a photo of a cat", "oil painting, by Claude Monet"]:
        ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert ids == open_clip_tokenizer([prompt])[0].tolist()


def test_cache_is_written_once(tmp_path):
    build_clip_tokenizer(cache_dir=tmp_path)
    stamp = (tmp_path / "vocab.json").stat().st_mtime_ns
    build_clip_tokenizer(cache_dir=tmp_path, max_length=16)
    assert (tmp_path / "vocab.json").stat().st_mtime_ns == stamp


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="pad_token"):
        build_clip_tokenizer(cache_dir=tmp_path, pad_token="<not-a-token>")
    with pytest.raises(ValueError, match="max_length"):
        build_clip_tokenizer(cache_dir=tmp_path, max_length=1)
