"""scripts/bench/style_blur.py: how much blur each style survives in the judge's eyes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.scripts import load_script
from unlearn.eval.judge_sinks import blur

ROOT = Path(__file__).resolve().parents[2]
JUDGE = ROOT / "checkpoints" / "toy" / "judge.safetensors"


def test_blur_keeps_the_mean_and_removes_detail():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    out = blur(images, 1.0)
    assert out.shape == images.shape
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the reflected border
    torch.testing.assert_close(out[inner].mean(), images[inner].mean(), atol=1e-2, rtol=0)
    assert out.std() < 0.5 * images.std()
    torch.testing.assert_close(blur(torch.ones(1, 3, 8, 8), 2.0), torch.ones(1, 3, 8, 8), atol=1e-6, rtol=0)


def test_sharp_renders_read_right_and_blur_loses_the_fine_styles(tmp_path):
    main = load_script("bench/style_blur.py").main
    out = tmp_path / "style_blur.json"
    result = main(["--judge", str(JUDGE), "--count", "16", "--sigmas", "0", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    rows = {r["style"]: r["by_sigma"] for r in result["styles"]}
    assert len(rows) == 8 and all(r[0]["right"] == 16 and r[0]["n"] == 16 for r in rows.values())
    assert rows["noisy"][1]["right"] == 0 and rows["gradient"][1]["right"] == 16  # the blur sink
    assert sum(rows["noisy"][1]["read_as"].values()) == 16
    lo, hi = rows["wavy"][0]["ci"]
    assert 79 < lo < 81 and hi == 100.0  # Wilson at 16 of 16
    assert (tmp_path / "style_blur.md").read_text().startswith("Real renders the judge still reads")
