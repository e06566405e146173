"""CLIPTextEmbedder: local loading, layer selection, pooling, errors."""

from __future__ import annotations

import pytest
import torch

from unlearn.conditioning import CLIPTextEmbedder, build_clip_tokenizer

from .conditioning_helpers import TINY_CLIP, _isolated_tokenizer_cache  # noqa: F401

PROMPTS = ["a photo of a cat", "a painting of a dog by Van Gogh"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A diffusers-style folder with two tiny text encoders and their tokenizers."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = tmp_path_factory.mktemp("pipeline")
    cache = tmp_path_factory.mktemp("tok_cache")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(**TINY_CLIP)).save_pretrained(root / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(**TINY_CLIP)).save_pretrained(root / "text_encoder_2")
    build_clip_tokenizer(cache_dir=cache).save_pretrained(root / "tokenizer")
    build_clip_tokenizer(cache_dir=cache, pad_token="!").save_pretrained(root / "tokenizer_2")
    return root


def _reference(folder, subfolder, with_projection=False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls.from_pretrained(str(folder / subfolder)).eval()
    tok = CLIPTokenizer.from_pretrained(str(folder / subfolder.replace("text_encoder", "tokenizer")))
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids, output_hidden_states=True), model


def test_local_load_matches_in_memory_model(pipeline_dir):
    emb = CLIPTextEmbedder(pretrained_path=str(pipeline_dir), subfolder="text_encoder")
    ids, ref, _ = _reference(pipeline_dir, "text_encoder")
    assert torch.equal(emb.tokenize(PROMPTS), ids)
    with torch.no_grad():
        out = emb(PROMPTS)
    assert out.shape == (2, 77, 32)
    torch.testing.assert_close(out, ref.last_hidden_state, rtol=0, atol=0)
    assert emb.tokenizer.pad_token_id == 49407  # the sibling tokenizer/ folder was used


def test_second_encoder_uses_tokenizer_2_and_projection(pipeline_dir):
    emb = CLIPTextEmbedder(
        pretrained_path=str(pipeline_dir),
        subfolder="text_encoder_2",
        layer="penultimate",
        with_projection=True,
        return_pooled=True,
    )
    assert emb.tokenizer.pad_token == "!"
    ids, ref, _ = _reference(pipeline_dir, "text_encoder_2", with_projection=True)
    with torch.no_grad():
        crossattn, pooled = emb(PROMPTS)
    assert crossattn.shape == (2, 77, 32) and pooled.shape == (2, 16)
    torch.testing.assert_close(crossattn, ref.hidden_states[-2], rtol=0, atol=0)
    torch.testing.assert_close(pooled, ref.text_embeds, rtol=0, atol=0)


def test_layer_selection(pipeline_dir):
    ids, ref, model = _reference(pipeline_dir, "text_encoder")
    outs = {}
    for name, kwargs in {
        "last": {},
        "penultimate": {"layer": "penultimate"},
        "hidden1": {"layer": "hidden", "layer_idx": 1},
        "penultimate_norm": {"layer": "penultimate", "final_norm": True},
    }.items():
        emb = CLIPTextEmbedder(pretrained_path=str(pipeline_dir), subfolder="text_encoder", **kwargs)
        with torch.no_grad():
            outs[name] = emb(PROMPTS)
    torch.testing.assert_close(outs["last"], ref.last_hidden_state)
    torch.testing.assert_close(outs["penultimate"], ref.hidden_states[-2])  # SDXL: no final LayerNorm
    torch.testing.assert_close(outs["hidden1"], ref.hidden_states[1])
    with torch.no_grad():
        torch.testing.assert_close(outs["penultimate_norm"], model.final_layer_norm(ref.hidden_states[-2]))
    assert not torch.allclose(outs["penultimate"], outs["last"], atol=1e-3)


def test_pooled_without_projection_is_pooler_output(pipeline_dir):
    emb = CLIPTextEmbedder(pretrained_path=str(pipeline_dir), subfolder="text_encoder", return_pooled=True)
    _, ref, _ = _reference(pipeline_dir, "text_encoder")
    with torch.no_grad():
        _, pooled = emb(PROMPTS)
    torch.testing.assert_close(pooled, ref.pooler_output)
    # Flux reads CLIP-L's pooled output alone: one (B, D) tensor, routed to "vector"
    only = CLIPTextEmbedder(pretrained_path=str(pipeline_dir), subfolder="text_encoder", pooled_only=True)
    with torch.no_grad():
        out = only(PROMPTS)
    assert torch.is_tensor(out) and out.shape == (2, TINY_CLIP["hidden_size"])
    torch.testing.assert_close(out, ref.pooler_output)


def test_missing_and_hub_like_paths_name_the_path(tmp_path, pipeline_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="pretrained_path.*nowhere"):
        CLIPTextEmbedder(pretrained_path=str(missing))
    with pytest.raises(FileNotFoundError, match="stabilityai/stable-diffusion-xl-base-1.0.*Hub id.*local folder"):
        CLIPTextEmbedder(pretrained_path="stabilityai/stable-diffusion-xl-base-1.0", subfolder="text_encoder")
    with pytest.raises(FileNotFoundError, match="no subfolder 'text_encoder_3'"):
        CLIPTextEmbedder(pretrained_path=str(pipeline_dir), subfolder="text_encoder_3")
    with pytest.raises(FileNotFoundError, match="tokenizer_path.*nowhere"):
        CLIPTextEmbedder(config=TINY_CLIP, tokenizer_path=str(missing))


def test_argument_errors():
    with pytest.raises(ValueError, match="exactly one of pretrained_path"):
        CLIPTextEmbedder()
    with pytest.raises(ValueError, match="layer_idx"):
        CLIPTextEmbedder(config=TINY_CLIP, layer="hidden")
    with pytest.raises(ValueError, match="layer_idx must be in"):
        CLIPTextEmbedder(config=TINY_CLIP, layer="hidden", layer_idx=7)
    with pytest.raises(ValueError, match="vocab_size"):
        CLIPTextEmbedder(config={**TINY_CLIP, "vocab_size": 1000})
    with pytest.raises(ValueError, match="max_length"):
        CLIPTextEmbedder(config=TINY_CLIP, max_length=100)


def test_tiny_config_model_is_trainable_with_offline_tokenizer():
    torch.manual_seed(0)
    emb = CLIPTextEmbedder(config=TINY_CLIP, freeze=False, max_length=16)
    out = emb(PROMPTS)
    assert out.shape == (2, 16, 32)
    out.pow(2).mean().backward()
    grad = emb.transformer.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    frozen = CLIPTextEmbedder(config=TINY_CLIP)
    assert not any(p.requires_grad for p in frozen.parameters())
