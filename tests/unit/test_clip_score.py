"""CLIP score through open_clip from a local weight file (a tiny random CLIP here)."""

from __future__ import annotations

import json

import pytest
import torch

from unlearn.eval.clip_score import CLIPScorer, clip_score

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    root = tmp_path_factory.mktemp("clip")
    torch.save(model.state_dict(), root / "open_clip_pytorch_model.bin")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root, model.eval()


def test_scores_are_100_times_the_clamped_cosine(weights):
    root, reference = weights
    scorer = CLIPScorer(str(root / "open_clip_pytorch_model.bin"), model_config=str(root / "tiny.json"))
    images = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prompts = ["a cat", "a dog on grass", "a red car"]
    scores = scorer(images, prompts)
    with torch.no_grad():
        img = reference.encode_image(scorer._pixels(images), normalize=True)
        txt = reference.encode_text(scorer.tokenizer(prompts), normalize=True)
    expected = 100 * (img * txt).sum(-1).clamp(min=0)
    torch.testing.assert_close(scores, expected)
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 100)).all())
    result = clip_score(images, prompts, str(root / "open_clip_pytorch_model.bin"), model_config=TINY, batch_size=2)
    assert result["scores"] == pytest.approx(scores.tolist(), abs=1e-5)
    assert result["definition"] == "100 * max(cos, 0)" and result["checkpoint"].endswith(".bin")


def test_missing_or_mismatched_weights_are_clear_errors(weights, tmp_path):
    root, _ = weights
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        CLIPScorer(str(tmp_path / "missing.bin"), model_config=TINY)
    wider = {**TINY, "embed_dim": 8}
    with pytest.raises(ValueError, match="does not fit model_config"):
        CLIPScorer(str(root / "open_clip_pytorch_model.bin"), model_config=wider)
    with pytest.raises(ValueError, match="not an open_clip model"):
        CLIPScorer(str(root / "open_clip_pytorch_model.bin"), arch="ViT-Q-99")
