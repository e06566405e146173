"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

The fine-tuned model eps_theta is trained so that, conditioned on the concept c, it
predicts the frozen model's *negatively guided* noise (Sec. 3 of the paper):

    eps_theta(x_t, c, t)  <-  eps*(x_t, t) - eta [eps*(x_t, c, t) - eps*(x_t, t)]

    loss = || eps_theta(x_t, c_train, t) - sg(target) ||^2      (mean squared error)

with eta = ``negative_guidance`` and eps* the frozen (teacher) model. Every prediction is
an eps estimate (x - D(x, sigma)) / sigma, so v-prediction models are handled too.

**Erase from** (official ``esd_sd.py``, ``--erase_from``): with a prompt c_from, x_t is
sampled from c_from, the student sees c_from, and the anchor is the teacher's
prediction for c_from:

    target = eps*(x_t, c_from) - eta [eps*(x_t, c) - eps*(x_t, ∅)]

i.e. "make c_from behave as if c were subtracted from it".

**Anchor without erase-from.** The paper and ``train-scripts/train-esd.py`` anchor on
eps*(x_t, ∅) (``anchor="null"``, the default). The newer ``esd_sd.py`` anchors on
eps*(x_t, c) (``anchor="concept"``): eps*(c) - eta (eps*(c) - eps*(∅)) equals the
null-anchored target with eta - 1, so that script's default eta = 2 is the paper's eta = 1.

**Preserve** (optional): for a prompt p to keep, a positively guided target on the same
x_t, eps*(x_t, ∅) + eta_p [eps*(x_t, p) - eps*(x_t, ∅)], weighted by ``preserve_weight``.
At eta_p = 1 (default) this is plain anchoring of p to the original model, the
prior-preservation term of concept-ablation style methods (Kumari et al., "Ablating
Concepts in Text-to-Image Diffusion Models", ICCV 2023); eta_p > 1 strengthens p. By
default the preserve term reuses the erased concept's x_t (it guards p where erasing c
would spill over; one more teacher and one more student forward per sample). With
``ErasureBatch.preserve_x`` it is checked on latents of p's own frozen trajectories
instead, as concept ablation's regularisation images are generated from p: that is where
the model is sampled when p is prompted (two more teacher forwards, one more student).

**Null anchor** (optional, not in the paper): CFG samples the fine-tuned model with
eps_theta(x_t, ∅) + s [eps_theta(x_t, c) - eps_theta(x_t, ∅)], but the loss never sees
eps_theta(x_t, ∅). When the trained tensors see no text (ESD-u), they can move the null
prediction along with the concept's, and the guided difference, which is what draws the
concept, survives. ``null_weight`` > 0 adds null_weight * || eps_theta(x_t, ∅) - eps*(x_t, ∅) ||^2
on the same x_t (the teacher's e_null is already computed: one more student forward).

**Noise-level weighting** (optional, not in the paper): the paper's plain eps MSE weighs
every sample alike in eps space, i.e. lambda(sigma) = sigma^-2 in x0 space, so the loss is
dominated by the nearly clean steps, where prompts differ in texture and colour, while an
object's shape is fixed at high noise, where eps predictions of different prompts barely
differ. ``weighting`` (a `unlearn.diffusion.loss_weighting.LossWeighting`, e.g.
`VWeighting`: the v-prediction MSE, eps weight sigma^2 + 1) reweighs each sample by
lambda(sigma) sigma^2 in eps space, the same x0-space weighting a diffusion training loss
uses. None (default) is the paper's loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unlearn.config import non_negative_number
from unlearn.diffusion.loss_weighting import LossWeighting
from unlearn.objectives.base import EpsFn, ErasureBatch, ObjectiveOutput, PredictionObjective, batched_calls

__all__ = ["ANCHORS", "esd_target", "preserve_target", "ESDObjective"]

ANCHORS: tuple[str, ...] = ("null", "concept")


def esd_target(
    e_null: torch.Tensor, e_concept: torch.Tensor, negative_guidance: float, e_anchor: torch.Tensor | None = None
) -> torch.Tensor:
    """e_anchor - eta (e_concept - e_null); e_anchor defaults to e_null (the paper). All (B, C, H, W)."""
    anchor = e_null if e_anchor is None else e_anchor
    return anchor - negative_guidance * (e_concept - e_null)


def preserve_target(e_null: torch.Tensor, e_keep: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
    """e_null + eta_p (e_keep - e_null): e_keep itself at eta_p = 1. All (B, C, H, W)."""
    return e_null + guidance * (e_keep - e_null)


class ESDObjective(PredictionObjective):
    """The ESD loss over an `ErasureBatch`, with the teacher's prompt roles in one batched call.

    Args:
        negative_guidance: eta.
        anchor: ``"null"`` (paper) or ``"concept"`` (``esd_sd.py``); ignored with erase-from,
            whose anchor is always eps*(x_t, c_from).
        preserve_guidance: eta_p of the preserve target.
        preserve_weight: weight of the preserve term in the loss.
        null_weight: weight of the null-anchor term (0: the paper, no such term).
        weighting: x0-space weighting lambda(sigma) of every sample (see the module docstring),
            a `LossWeighting` target block; None: the paper's plain eps MSE.
    """

    name = "esd"

    def __init__(
        self,
        negative_guidance: float = 1.0,
        anchor: str = "null",
        preserve_guidance: float = 1.0,
        preserve_weight: float = 1.0,
        null_weight: float = 0.0,
        weighting: LossWeighting | None = None,
    ):
        if anchor not in ANCHORS:
            raise ValueError(f"anchor: expected one of {list(ANCHORS)}, got {anchor!r}")
        if weighting is not None and not isinstance(weighting, LossWeighting):
            raise ValueError(f"weighting: expected a LossWeighting target block, got {weighting!r}")
        self.negative_guidance = float(negative_guidance)
        self.anchor = anchor
        self.preserve_guidance = float(preserve_guidance)
        self.preserve_weight = non_negative_number(preserve_weight, "preserve_weight")
        self.null_weight = non_negative_number(null_weight, "null_weight")
        self.weighting = weighting

    def _mse(self, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Mean squared eps error; with a weighting, each sample's weighted by lambda(sigma) sigma^2."""
        if self.weighting is None:
            return F.mse_loss(pred, target)
        w = (self.weighting(sigma.float()) * sigma.float() ** 2).view(-1)  # (B,)
        per_sample = (pred - target).pow(2).flatten(1).mean(dim=1)
        return (w * per_sample).mean()

    def __call__(self, student: EpsFn, teacher: EpsFn, batch: ErasureBatch) -> ObjectiveOutput:
        x, sigma = batch.x, batch.sigma  # (B, C, H, W), (B,)
        px, ps = batch.preserve_latents
        own_preserve = batch.preserve is not None and batch.preserve_x is not None
        teacher_calls = {"null": (x, sigma, batch.null), "concept": (x, sigma, batch.concept)}
        if batch.erase_from is not None:
            teacher_calls["erase_from"] = (x, sigma, batch.erase_from)
        if own_preserve:  # p's own latents need their own null prediction for the target
            teacher_calls["preserve_null"] = (px, ps, batch.null)
        if batch.preserve is not None:
            teacher_calls["preserve"] = (px, ps, batch.preserve)
        known = {role: e.float() for role, e in (batch.teacher_eps or {}).items() if role in teacher_calls}
        missing = {role: call for role, call in teacher_calls.items() if role not in known}
        eps = dict(known)
        if missing:
            with torch.no_grad():
                eps.update({role: e.float() for role, e in batched_calls(teacher, missing).items()})
        if batch.erase_from is not None:
            e_anchor = eps["erase_from"]
        else:
            e_anchor = eps["concept"] if self.anchor == "concept" else eps["null"]
        target = esd_target(eps["null"], eps["concept"], self.negative_guidance, e_anchor)

        student_calls = {"erase": (x, sigma, batch.erase_prompt)}
        if batch.preserve is not None:
            student_calls["preserve"] = (px, ps, batch.trained_cond("preserve"))
        if self.null_weight > 0:
            student_calls["null"] = (x, sigma, batch.trained_cond("null"))
        pred = {role: p.float() for role, p in batched_calls(student, student_calls).items()}
        loss_erase = self._mse(pred["erase"], target, sigma)
        loss = loss_erase
        logs = {"loss_erase": loss_erase.detach()}
        if batch.preserve is not None:
            e_null_p = eps["preserve_null"] if own_preserve else eps["null"]
            loss_preserve = self._mse(
                pred["preserve"], preserve_target(e_null_p, eps["preserve"], self.preserve_guidance), ps
            )
            loss = loss + self.preserve_weight * loss_preserve
            logs["loss_preserve"] = loss_preserve.detach()
        if self.null_weight > 0:
            loss_null = self._mse(pred["null"], eps["null"], sigma)
            loss = loss + self.null_weight * loss_null
            logs["loss_null"] = loss_null.detach()
        return ObjectiveOutput(loss=loss, logs=logs)

    def metadata(self) -> dict[str, Any]:
        return {
            "negative_guidance": self.negative_guidance,
            "anchor": self.anchor,
            "preserve_guidance": self.preserve_guidance,
            "preserve_weight": self.preserve_weight,
            "null_weight": self.null_weight,
            "loss_weighting": type(self.weighting).__name__ if self.weighting else "eps",
        }
