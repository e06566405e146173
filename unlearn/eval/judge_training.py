"""Training and held-out scoring of the canvas judge.

``JudgeTrainingModule`` is a LightningModule (cross-entropy on both heads, AdamW with a
one-cycle schedule) fed by ``CanvasDataModule``; every batch is freshly rendered, so the
judge never sees an image twice. ``held_out_accuracy`` scores a judge on images rendered
with a seed of its own.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from unlearn.data.canvas_datamodule import CanvasDataset
from unlearn.eval.judge import CanvasJudge

__all__ = ["JudgeTrainingModule", "held_out_accuracy"]


class JudgeTrainingModule(L.LightningModule):
    """Fits a ``CanvasJudge`` to canvas batches ``{"jpg", "object", "style"}``.

    Args:
        judge: the network to train (built by the caller or by the config system).
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        total_steps: length of the schedule (the Trainer's ``max_steps``).
    """

    def __init__(self, judge: CanvasJudge, lr: float = 3e-3, weight_decay: float = 1e-4, total_steps: int = 1000):
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.judge = judge
        self.lr = lr
        self.weight_decay = weight_decay
        self.total_steps = total_steps

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        obj_logits, style_logits = self.judge(batch["jpg"])
        loss = F.cross_entropy(obj_logits, batch["object"]) + F.cross_entropy(style_logits, batch["style"])
        obj_acc = (obj_logits.argmax(-1) == batch["object"]).float().mean()
        style_acc = (style_logits.argmax(-1) == batch["style"]).float().mean()
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/object_acc": obj_acc, f"{stage}/style_acc": style_acc},
            prog_bar=True,
            batch_size=batch["jpg"].shape[0],
        )
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.judge.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.total_steps, pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def held_out_accuracy(
    judge: CanvasJudge,
    n_images: int,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Object, style and joint accuracy (fractions) on ``n_images`` fresh canvas images.

    The images come from ``CanvasDataset(n_images, seed=seed)`` at the judge's image size;
    pick a seed the judge was not trained on.
    """
    dataset = CanvasDataset(n_images, seed=seed, image_size=judge.image_size, caption_mode="joint")
    judge = judge.to(device).eval()
    hits = torch.zeros(3, dtype=torch.long)
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="held-out", disable=not progress):
        obj_logits, style_logits = judge(batch["jpg"].to(device))
        ok_obj = obj_logits.argmax(-1).cpu() == batch["object"]
        ok_style = style_logits.argmax(-1).cpu() == batch["style"]
        hits += torch.stack([ok_obj.sum(), ok_style.sum(), (ok_obj & ok_style).sum()])
    obj, style, joint = (hits.double() / n_images).tolist()
    return {"object_acc": obj, "style_acc": style, "joint_acc": joint}
