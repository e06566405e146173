"""CanvasDataset items and CanvasDataModule loaders."""

import torch

from unlearn.data.canvas import CANVAS_OBJECTS, CANVAS_STYLES
from unlearn.data.canvas_datamodule import CanvasDataModule, CanvasDataset


def test_item_format_range_and_determinism():
    ds = CanvasDataset(64, seed=3, image_size=32)
    item = ds[5]
    assert set(item) == {"jpg", "txt", "object", "style"}
    assert item["jpg"].shape == (3, 32, 32) and item["jpg"].dtype == torch.float32
    assert item["jpg"].min() >= -1.0 and item["jpg"].max() <= 1.0 and item["jpg"].min() < -0.3
    again = CanvasDataset(64, seed=3, image_size=32)[5]
    assert torch.equal(item["jpg"], again["jpg"]) and item["txt"] == again["txt"]
    other = CanvasDataset(64, seed=4, image_size=32)[5]
    assert not torch.equal(item["jpg"], other["jpg"])


def test_captions_match_labels_and_subsets_keep_global_ids():
    ds = CanvasDataset(200, seed=0, caption_mode="joint", objects=["moon", "arrow"], styles=["wavy"])
    for i in range(0, 200, 7):
        item = ds[i]
        assert item["object"] in (6, 7) and item["style"] == 7
        assert CANVAS_OBJECTS[item["object"]] in item["txt"] and CANVAS_STYLES[item["style"]] in item["txt"]


def test_labels_cover_the_canvas():
    ds = CanvasDataset(2000, seed=1)
    pairs = {ds.labels(i)[:2] for i in range(len(ds))}
    assert len(pairs) == 64


def test_datamodule_batches_and_disjoint_seeds():
    dm = CanvasDataModule(batch_size=8, train_length=16, val_length=8, seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["jpg"].shape == (8, 3, 32, 32) and len(batch["txt"]) == 8
    assert batch["object"].dtype == torch.int64
    train = torch.stack([dm.train_set[i]["jpg"] for i in range(8)])
    val = next(iter(dm.val_dataloader()))["jpg"]
    assert not any(torch.equal(t, v) for t in train for v in val)
