"""OpenCLIPTextEmbedder with a tiny open_clip text config."""

from __future__ import annotations

import pytest
import torch

from unlearn.conditioning import OpenCLIPTextEmbedder

from .conditioning_helpers import TINY_OPENCLIP

PROMPTS = ["a photo of a cat", "a painting of a dog"]


def _embedder(seed: int = 0, **kwargs) -> OpenCLIPTextEmbedder:
    torch.manual_seed(seed)
    return OpenCLIPTextEmbedder(model_config=TINY_OPENCLIP, **kwargs)


def test_shapes_and_layers_match_open_clip():
    pen = _embedder(layer="penultimate", return_pooled=True)
    last = _embedder(layer="last")  # same seed: same weights
    with torch.no_grad():
        z_pen, pooled = pen(PROMPTS)
        z_last = last(PROMPTS)
        tokens = pen.tokenize(PROMPTS)
        model = pen.model
        inter = model.forward_intermediates(tokens, indices=[1], output_fmt="NLC")  # block outputs
        model.output_tokens = True
        ref_pooled, ref_tokens = model(tokens)
    assert z_pen.shape == z_last.shape == (2, 77, 32) and pooled.shape == (2, 16)
    torch.testing.assert_close(z_last, ref_tokens)  # all blocks, then ln_final
    torch.testing.assert_close(pooled, ref_pooled)
    torch.testing.assert_close(z_pen, model.ln_final(inter["text_intermediates"][0]))  # one block before the end
    assert not torch.allclose(z_pen, z_last, atol=1e-3)
    assert not any(p.requires_grad for p in pen.parameters())


def test_tokenizer_is_open_clips():
    import open_clip

    emb = _embedder()
    assert torch.equal(emb.tokenize(PROMPTS), open_clip.get_tokenizer("ViT-H-14")(PROMPTS))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_checkpoint_round_trip(tmp_path, fmt):
    source = _embedder(seed=0)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "text.safetensors"
        save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    else:  # a full open_clip CLIP state dict: text keys at top level, plus visual.* keys
        path = tmp_path / "open_clip_pytorch_model.bin"
        state = dict(source.model.state_dict())
        state.update({"visual.proj": torch.zeros(3), "logit_scale": torch.tensor(1.0)})
        torch.save(state, path)
    loaded = _embedder(seed=1, checkpoint=str(path))
    fresh = _embedder(seed=1)
    with torch.no_grad():
        expected = source(PROMPTS)
        torch.testing.assert_close(loaded(PROMPTS), expected, rtol=0, atol=0)
        assert not torch.allclose(fresh(PROMPTS), expected)


def test_checkpoint_errors(tmp_path):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="checkpoint.*absent.safetensors"):
        _embedder(checkpoint=str(missing))
    partial = tmp_path / "partial.pt"
    torch.save({"token_embedding.weight": torch.zeros(49408, 32)}, partial)
    with pytest.raises(ValueError, match="no complete OpenCLIP text tower"):
        _embedder(checkpoint=str(partial))


def test_argument_errors():
    with pytest.raises(ValueError, match="layer"):
        _embedder(layer="hidden")
    with pytest.raises(ValueError, match="arch"):
        OpenCLIPTextEmbedder(arch="not-a-model")
    with pytest.raises(ValueError, match="max_length"):
        _embedder(max_length=78)
