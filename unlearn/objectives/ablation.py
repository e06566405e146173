"""Concept Ablation: Ablating Concepts in Text-to-Image Diffusion Models (Kumari et al., ICCV 2023).

Model-based concept ablation (Sec. 3 of the paper, ``--loss_type_reverse model-based`` in the
official code): the model is fine-tuned so that, prompted with the concept prompt c*, it predicts
what the frozen model predicts for the concept's *anchor* prompt c ("a painting by Van Gogh" ->
"a painting"; "a grumpy cat" -> "a cat") on latents x_t of the anchor's own images:

    loss_ablate = || eps_theta(x_t, c*, t) - sg(eps*(x_t, c, t)) ||^2      (mean squared error)

With prior preservation (the official ``--with_prior_preservation``, ``prior_loss_weight`` 1) the
anchor prompt's own prediction is kept, so ablating c* does not drag c along:

    loss = loss_ablate + prior_weight || eps_theta(x_t, c, t) - eps*(x_t, c, t) ||^2

Here x_t come from the frozen model's sampler run on the anchor prompts and stopped at a random
step (`unlearn.engine.finetune.FineTuneEngine` with anchor prompts: ``ErasureBatch.anchor``), where
the official code noises its pre-generated anchor images (x_0 from the anchor prompts) at a random
t. Its prior term is the noise-prediction loss on those images, || eps_theta(x_t, c) - eps ||^2;
here it is anchored to the frozen model's prediction instead, which needs no clean images and is
zero at the start of training. The official code also takes the target from the model being
fine-tuned (under ``no_grad``) rather than the frozen original: ``target_model: trained`` does
that, ``original`` (default) is the frozen model of the paper's equation. Every prediction is an eps
estimate (x - D(x, sigma)) / sigma, so v-prediction models are handled as they are by ESD.

``preserve`` prompts of the batch (the engine's ``preserve`` role), if any, are kept at the frozen
model's prediction too, weighted by ``preserve_weight``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unlearn.config import non_negative_number
from unlearn.objectives.base import EpsFn, ErasureBatch, ObjectiveOutput, PredictionObjective, batched_calls

__all__ = ["TARGETS", "ConceptAblationObjective"]

TARGETS: tuple[str, ...] = ("original", "trained")


class ConceptAblationObjective(PredictionObjective):
    """The model-based concept ablation loss over an `ErasureBatch` with anchor prompts.

    Args:
        prior_weight: weight of the prior-preservation term on the anchor prompt (0: off, the
            official default; the official ``prior_loss_weight`` is 1 when it is on).
        target_model: whose anchor prediction the concept is trained towards: ``original`` (the frozen
            model, the paper's equation) or ``trained`` (the model being fine-tuned, without
            gradient, as the official code computes it).
        preserve_weight: weight of the term keeping the batch's ``preserve`` prompts (if any).
    """

    name = "ca"
    uses_anchor = True

    def __init__(self, prior_weight: float = 0.0, target_model: str = "original", preserve_weight: float = 1.0):
        if target_model not in TARGETS:
            raise ValueError(f"target_model: expected one of {list(TARGETS)}, got {target_model!r}")
        self.prior_weight = non_negative_number(prior_weight, "prior_weight")
        self.target_model = target_model
        self.preserve_weight = non_negative_number(preserve_weight, "preserve_weight")

    def __call__(self, student: EpsFn, teacher: EpsFn, batch: ErasureBatch) -> ObjectiveOutput:
        if batch.anchor is None:
            raise ValueError("ConceptAblationObjective needs ErasureBatch.anchor (the engine's anchor prompts)")
        x, sigma = batch.x, batch.sigma  # (B, C, H, W), (B,): from the anchor prompts' trajectories
        px, ps = batch.preserve_latents
        teacher_calls = {"anchor": (x, sigma, batch.anchor)}
        if batch.preserve is not None:
            teacher_calls["preserve"] = (px, ps, batch.preserve)
        with torch.no_grad():
            eps = {role: e.float() for role, e in batched_calls(teacher, teacher_calls).items()}

        student_calls = {"ablate": (x, sigma, batch.erase_prompt)}
        if self.prior_weight > 0:
            student_calls["prior"] = (x, sigma, batch.trained_cond("anchor"))
        if batch.preserve is not None:
            student_calls["preserve"] = (px, ps, batch.trained_cond("preserve"))
        pred = {role: p.float() for role, p in batched_calls(student, student_calls).items()}

        if self.target_model == "original":
            target = eps["anchor"]
        elif "prior" in pred:
            target = pred["prior"].detach()
        else:
            with torch.no_grad():
                target = student(x, sigma, batch.trained_cond("anchor")).float()
        loss_ablate = F.mse_loss(pred["ablate"], target)
        loss = loss_ablate
        logs = {"loss_ablate": loss_ablate.detach()}
        if self.prior_weight > 0:
            loss_prior = F.mse_loss(pred["prior"], eps["anchor"])
            loss = loss + self.prior_weight * loss_prior
            logs["loss_prior"] = loss_prior.detach()
        if batch.preserve is not None:
            loss_preserve = F.mse_loss(pred["preserve"], eps["preserve"])
            loss = loss + self.preserve_weight * loss_preserve
            logs["loss_preserve"] = loss_preserve.detach()
        return ObjectiveOutput(loss=loss, logs=logs)

    def metadata(self) -> dict[str, Any]:
        return {
            "prior_weight": self.prior_weight,
            "target_model": self.target_model,
            "preserve_weight": self.preserve_weight,
        }
