"""SD3's text conditioning pieces: the offline T5 tokenizer, T5TextEmbedder, and the conditioner's
``join: tokens`` that builds the joint text tokens as StableDiffusion3Pipeline.encode_prompt does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from unlearn.conditioning import AbstractEmbModel, GeneralConditioner, T5TextEmbedder
from unlearn.conditioning.t5_tokenizer import build_t5_tokenizer

from .conditioning_helpers import TINY_CLIP, _isolated_tokenizer_cache  # noqa: F401

TINY_T5 = dict(
    vocab_size=300,
    d_model=24,
    d_ff=48,
    d_kv=8,
    num_heads=3,
    num_layers=2,
    relative_attention_num_buckets=8,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
)


@pytest.fixture(scope="module")
def t5_tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5_tokenizer")
    build_t5_tokenizer(vocab_size=300, extra_ids=0).save_pretrained(folder)
    return folder


def _t5(folder, **kw):
    torch.manual_seed(0)
    return T5TextEmbedder(config=TINY_T5, tokenizer_path=str(folder), **kw)


def test_t5_tokenizer_layout():
    tok = build_t5_tokenizer()
    assert len(tok) == 32100  # T5's 32000 pieces + 100 sentinels
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("a photo of a cat").input_ids
    assert ids[-1] == 1 and 2 not in ids and len(ids) == 6  # five known words, then </s>
    assert build_t5_tokenizer()("a photo of a cat").input_ids == ids  # deterministic
    assert tok.convert_ids_to_tokens(32099) == "<extra_id_0>"
    with pytest.raises(ValueError, match="vocab_size: expected at least"):
        build_t5_tokenizer(vocab_size=10)


def test_t5_embedder_pads_ends_and_encodes(t5_tokenizer_dir):
    emb = _t5(t5_tokenizer_dir, max_length=12)
    ids = emb.tokenize(["a photo of a cat", ""])
    assert ids.shape == (2, 12)
    assert ids[0, :6].tolist()[-1] == 1 and ids[0, 6:].tolist() == [0] * 6
    assert ids[1].tolist() == [1] + [0] * 11  # the empty prompt is </s> then padding
    long = emb.tokenize([" ".join(["cat"] * 40)])
    assert long.shape == (1, 12) and long[0, -1] == 1  # truncated, still ended by </s>
    out = emb(["a photo of a cat", ""])
    assert out.shape == (2, 12, 24) and not out.requires_grad
    torch.testing.assert_close(out, emb.transformer(input_ids=ids).last_hidden_state)
    assert not torch.allclose(out[0], out[1])
    assert all(not p.requires_grad for p in emb.parameters())


def test_t5_embedder_errors(t5_tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="exactly one of pretrained_path"):
        T5TextEmbedder()
    with pytest.raises(ValueError, match="needs tokenizer_path"):
        T5TextEmbedder(config=TINY_T5)
    with pytest.raises(ValueError, match="vocab_size is 100"):
        T5TextEmbedder(config={**TINY_T5, "vocab_size": 100}, tokenizer_path=str(t5_tokenizer_dir))
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub id"):
        T5TextEmbedder(pretrained_path="stabilityai/stable-diffusion-3-medium-diffusers", subfolder="text_encoder_3")
    file = tmp_path / "sd3_medium.safetensors"  # a single file without T5: the encoder comes from a folder
    save_file({"model.diffusion_model.pos_embed": torch.zeros(1)}, str(file))
    with pytest.raises(ValueError, match="holds no T5 encoder: set single_file_config .* text_encoder_3/config.json"):
        T5TextEmbedder(pretrained_path=str(file), subfolder="text_encoder_3")
    # a folder with the encoder but no tokenizer
    _t5(t5_tokenizer_dir).transformer.save_pretrained(tmp_path / "pipe" / "text_encoder_3")
    with pytest.raises(FileNotFoundError, match="no T5 tokenizer"):
        T5TextEmbedder(pretrained_path=str(tmp_path / "pipe"), subfolder="text_encoder_3")
    build_t5_tokenizer(300, 0).save_pretrained(tmp_path / "pipe" / "tokenizer_3")
    loaded = T5TextEmbedder(pretrained_path=str(tmp_path / "pipe"), subfolder="text_encoder_3", max_length=8)
    torch.testing.assert_close(loaded(["a cat"]), _t5(t5_tokenizer_dir, max_length=8)(["a cat"]))


class Fixed(AbstractEmbModel):
    """Returns fixed tensors (one or several) whatever the prompts."""

    def __init__(self, *outputs, output_key=None, join="channels"):
        super().__init__()
        self.outputs, self.input_key, self.output_key, self.join = outputs, "txt", output_key, join

    def forward(self, text):
        return self.outputs if len(self.outputs) > 1 else self.outputs[0]


def test_join_tokens_builds_sd3_joint_text_tokens():
    g = torch.Generator().manual_seed(0)
    clip_l, clip_g, t5 = (
        torch.randn(2, 5, 3, generator=g),
        torch.randn(2, 5, 4, generator=g),
        torch.randn(2, 7, 9, generator=g),
    )
    pool_l, pool_g = torch.randn(2, 3, generator=g), torch.randn(2, 4, generator=g)
    cond = GeneralConditioner(
        [
            Fixed(clip_l, pool_l, output_key=["crossattn", "vector"]),
            Fixed(clip_g, pool_g, output_key=["crossattn", "vector"]),
            Fixed(t5, output_key="crossattn", join="tokens"),
        ]
    )({"txt": ["a", "b"]})
    # StableDiffusion3Pipeline.encode_prompt's formula
    clip = torch.cat([clip_l, clip_g], dim=-1)
    expected = torch.cat([F.pad(clip, (0, t5.shape[-1] - clip.shape[-1])), t5], dim=-2)
    assert cond["crossattn"].shape == (2, 12, 9) and torch.equal(cond["crossattn"], expected)
    assert torch.equal(cond["vector"], torch.cat([pool_l, pool_g], dim=-1))
    # the channel join alone is unchanged (the UNet conditioners' path)
    plain = GeneralConditioner([Fixed(clip_l), Fixed(clip_g)])({"txt": ["a", "b"]})
    assert torch.equal(plain["crossattn"], clip)
    # a wider earlier part pads the later one
    wide = GeneralConditioner([Fixed(t5), Fixed(clip_l, join="tokens")])({"txt": ["a", "b"]})
    assert torch.equal(wide["crossattn"], torch.cat([t5, F.pad(clip_l, (0, 6))], dim=1))


def test_join_errors():
    with pytest.raises(
        ValueError, match=r"emb_models\[0\]\.join: expected one of \('channels', 'tokens'\), got 'rows'"
    ):
        GeneralConditioner([{"target": "unlearn.conditioning.SizeConditionEmbedder", "input_key": "s", "join": "rows"}])
    cond = GeneralConditioner([Fixed(torch.zeros(2, 3)), Fixed(torch.zeros(2, 4), join="tokens")])
    with pytest.raises(ValueError, match=r"join: tokens needs \(B, L, D\) outputs"):
        cond({"txt": ["a", "b"]})
