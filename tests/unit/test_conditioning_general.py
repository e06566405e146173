"""GeneralConditioner: routing, concatenation, ucg dropout, freezing, errors."""

from __future__ import annotations

import pytest
import torch

from unlearn.conditioning import AbstractEmbModel, GeneralConditioner

from .conditioning_helpers import TINY_CLIP, _isolated_tokenizer_cache  # noqa: F401

CLIP = "unlearn.conditioning.CLIPTextEmbedder"
CLASS = "unlearn.conditioning.ClassEmbedder"
SIZE = "unlearn.conditioning.SizeConditionEmbedder"


def _clip(**params):
    return {"target": CLIP, "params": {"config": TINY_CLIP, **params}}


def _sdxl_like() -> GeneralConditioner:
    torch.manual_seed(0)
    big = {**TINY_CLIP, "hidden_size": 48, "projection_dim": 20}
    return GeneralConditioner(
        [
            {**_clip(layer="penultimate"), "input_key": "txt", "legacy_ucg_value": ""},
            {
                "target": CLIP,
                "input_key": "txt",
                "output_key": ["crossattn", "text_embeds"],
                "params": {"config": big, "layer": "penultimate", "with_projection": True, "return_pooled": True},
            },
            {"target": SIZE, "input_key": "original_size_as_tuple"},
            {"target": SIZE, "input_key": "crop_coords_top_left"},
            {"target": SIZE, "input_key": "target_size_as_tuple"},
        ]
    )


def test_crossattn_and_vector_routing():
    torch.manual_seed(0)
    cond = GeneralConditioner(
        [
            {**_clip(), "input_key": "txt"},
            {"target": CLASS, "params": {"n_classes": 5, "embed_dim": 8}, "input_key": "cls"},
        ]
    )
    out = cond({"txt": ["a cat", "a dog", "a car"], "cls": torch.tensor([0, 3, 4])})
    assert set(out) == {"crossattn", "vector"}
    assert out["crossattn"].shape == (3, 77, 32) and out["vector"].shape == (3, 8)
    torch.testing.assert_close(out["vector"], cond.embedders[1].embedding.weight[[0, 3, 4]])
    assert cond.input_keys == {"txt", "cls"}


def test_sdxl_like_keys_shapes_and_order():
    cond = _sdxl_like()
    batch = {
        "txt": ["a cat", "a dog"],
        "original_size_as_tuple": torch.tensor([[1024, 768], [512, 512]]),
        "crop_coords_top_left": torch.tensor([[0, 16], [8, 0]]),
        "target_size_as_tuple": torch.tensor([[1024, 1024], [640, 512]]),
    }
    out = cond(batch)
    assert set(out) == {"crossattn", "text_embeds", "time_ids"}
    assert out["crossattn"].shape == (2, 77, 32 + 48)
    assert out["text_embeds"].shape == (2, 20)
    expected_ids = torch.tensor([[1024, 768, 0, 16, 1024, 1024], [512, 512, 8, 0, 640, 512]], dtype=torch.float32)
    torch.testing.assert_close(out["time_ids"], expected_ids)
    with torch.no_grad():
        first = cond.embedders[0](batch["txt"])
        second, pooled = cond.embedders[1](batch["txt"])
    torch.testing.assert_close(out["crossattn"], torch.cat([first, second], dim=-1))
    torch.testing.assert_close(out["text_embeds"], pooled)


class _Image(AbstractEmbModel):
    """Returns a (B, C, H, W) map filled with a constant: routed to "concat"."""

    def __init__(self, channels: int, fill: float) -> None:
        super().__init__()
        self.channels, self.fill = channels, fill

    def forward(self, x):
        return torch.full((x.shape[0], self.channels, 4, 4), self.fill)


def test_concat_routing_joins_channels():
    a, b = _Image(2, 1.0), _Image(3, 2.0)
    a.input_key = b.input_key = "img"
    cond = GeneralConditioner([a, b])
    out = cond({"img": torch.zeros(2, 1)})
    assert out["concat"].shape == (2, 5, 4, 4)
    assert out["concat"][:, :2].eq(1).all() and out["concat"][:, 2:].eq(2).all()


def _class_cond(ucg_rate: float) -> GeneralConditioner:
    torch.manual_seed(0)
    return GeneralConditioner(
        [
            {"target": CLASS, "params": {"n_classes": 3, "embed_dim": 4}, "input_key": "cls", "ucg_rate": ucg_rate},
        ]
    )


def test_ucg_zero_dropout_rate_and_values():
    cond = _class_cond(0.5).train()
    batch = {"cls": torch.ones(2000, dtype=torch.long)}
    out = cond(batch, generator=torch.Generator().manual_seed(0))["vector"]
    dropped = out.abs().sum(dim=1) == 0
    assert 0.45 <= dropped.float().mean().item() <= 0.55
    kept = cond.embedders[0].embedding.weight[1]
    torch.testing.assert_close(out[~dropped], kept.expand(int((~dropped).sum()), -1))
    again = cond(batch, generator=torch.Generator().manual_seed(0))["vector"]
    assert torch.equal(out, again)  # seeded: the same samples are dropped


def test_ucg_legacy_value_replaces_text_with_empty_prompt():
    torch.manual_seed(0)
    cond = GeneralConditioner([{**_clip(max_length=8), "input_key": "txt", "ucg_rate": 0.5, "legacy_ucg_value": ""}])
    prompts = ["a photo of a cat"] * 2000
    out = cond.train()({"txt": prompts}, generator=torch.Generator().manual_seed(1))["crossattn"]
    with torch.no_grad():
        cat, empty = cond.embedders[0](["a photo of a cat", ""])
    is_empty = (out - empty).abs().amax(dim=(1, 2)) < 1e-5
    is_cat = (out - cat).abs().amax(dim=(1, 2)) < 1e-5
    assert torch.all(is_empty ^ is_cat)
    assert 0.45 <= is_empty.float().mean().item() <= 0.55


def test_no_dropout_in_eval_or_unconditional():
    cond = _class_cond(1.0)
    batch = {"cls": torch.full((64,), 2)}
    assert cond.eval()(batch)["vector"].abs().sum(dim=1).gt(0).all()
    cond.train()
    assert cond(batch)["vector"].abs().sum().item() == 0  # rate 1: all dropped in training
    c, uc = cond.get_unconditional_conditioning(batch, force_uc_zero_embeddings=["cls"])
    assert c["vector"].abs().sum(dim=1).gt(0).all()
    assert uc["vector"].abs().sum().item() == 0
    assert cond.embedders[0].ucg_rate == 1.0  # restored
    c2, uc2 = cond.get_unconditional_conditioning(batch, batch_uc={"cls": torch.zeros(64, dtype=torch.long)})
    torch.testing.assert_close(uc2["vector"], cond.embedders[0].embedding.weight[0].expand(64, -1))


def test_frozen_embedders_get_no_gradients():
    torch.manual_seed(0)
    cond = GeneralConditioner(
        [
            {**_clip(freeze=False, max_length=8), "input_key": "txt"},  # is_trainable defaults to False
            {**_clip(freeze=False, max_length=8), "input_key": "txt", "is_trainable": True},
            {"target": CLASS, "params": {"n_classes": 3, "embed_dim": 4}, "input_key": "cls", "is_trainable": True},
        ]
    ).train()
    frozen, trainable, classes = cond.embedders
    assert not frozen.training and trainable.training  # frozen stays in eval under .train()
    out = cond({"txt": ["a cat", "a dog"], "cls": torch.tensor([0, 2])})
    (out["crossattn"].pow(2).mean() + out["vector"].pow(2).mean()).backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert trainable.transformer.get_input_embeddings().weight.grad.abs().sum() > 0
    assert classes.embedding.weight.grad[[0, 2]].abs().sum() > 0


def test_errors_name_keys():
    cond = _class_cond(0.0)
    with pytest.raises(ValueError, match=r"'cls'.*\['txt'\]"):
        cond({"txt": ["a cat"]})
    with pytest.raises(ValueError, match=r"emb_models\[0\].*unknown key.*ucg"):
        GeneralConditioner(
            [{"target": CLASS, "params": {"n_classes": 2, "embed_dim": 2}, "input_key": "c", "ucg": 0.1}]
        )
    with pytest.raises(ValueError, match="input_key"):
        GeneralConditioner([{"target": CLASS, "params": {"n_classes": 2, "embed_dim": 2}}])
    with pytest.raises(ValueError, match="ucg_rate"):
        GeneralConditioner(
            [{"target": CLASS, "params": {"n_classes": 2, "embed_dim": 2}, "input_key": "c", "ucg_rate": 2}]
        )
    bad = GeneralConditioner(
        [
            {
                "target": CLASS,
                "params": {"n_classes": 2, "embed_dim": 2},
                "input_key": "c",
                "output_key": ["vector", "extra"],
            }
        ]
    )
    with pytest.raises(ValueError, match="output_key has 2"):
        bad({"c": torch.tensor([0])})


def test_built_by_instantiate_from_config():
    from unlearn.config import instantiate_from_config

    cond = instantiate_from_config(
        {
            "target": "unlearn.conditioning.GeneralConditioner",
            "params": {
                "emb_models": [
                    {"target": CLASS, "params": {"n_classes": 2, "embed_dim": 3}, "input_key": "cls", "ucg_rate": 0.1}
                ]
            },
        }
    )
    assert cond({"cls": torch.tensor([1])})["vector"].shape == (1, 3)
