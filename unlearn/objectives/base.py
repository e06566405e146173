"""The contracts of erasure and distillation objectives: one per role, one call shape each.

An objective is built by the engine from its ``objective_config`` target block; what only
exists at run time (networks, the denoiser) the engine passes as keyword arguments. Each
returns an `ObjectiveOutput`: the loss and the named terms to log.

* `PredictionObjective` (ESD, concept ablation): a trainable model (the *student*) is
  compared with its frozen original (the *teacher*) on noisy latents x_t. Both come as eps
  predictors ``eps(x, sigma, cond) -> (B, C, H, W)`` (``Denoiser.predict_eps`` bound to a
  network), so objectives work on eps-, v- and x0-parameterised models alike; the engine
  fills an `ErasureBatch` with the latents and the conditions of each prompt role (an
  objective that sets ``uses_anchor`` gets each concept prompt paired with its anchor prompt,
  and x_t from the anchors' trajectories).
* `TrajectoryObjective` (minimalist masks): compares the final latents of the masked and the
  original model's sampling trajectories, plus a regulariser on the masks.
* `DistillationObjective` (DMD2): the scores of a frozen teacher and a trainable critic give
  the generator's loss and the critic's own loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "EpsFn",
    "Cond",
    "ErasureBatch",
    "ObjectiveOutput",
    "PredictionObjective",
    "TrajectoryObjective",
    "DistillationObjective",
    "batched_calls",
    "cat_conds",
    "repeat_batch",
]

Cond = Mapping[str, Any]
EpsFn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


@dataclass
class ErasureBatch:
    """Inputs of one training step, by prompt role; every condition dict has batch size B.

    Attributes:
        x: (B, C, H, W) noisy latents in sigma space (x = x0 + sigma * eps), from the frozen
            model's trajectories of ``erase_from`` if given, else of ``anchor`` if given, else
            of ``concept``.
        sigma: (B,) their noise levels.
        concept: c, the prompt of the concept being erased.
        null: the empty prompt (the unconditional branch).
        erase_from: c_from when the concept is erased *from* another prompt, else None.
        preserve: a prompt to keep unchanged, else None.
        preserve_x, preserve_sigma: (B, C, H, W) and (B,), the latents the preserve prompt is
            checked on when they come from its own trajectories; None: on ``x`` and ``sigma``.
        trained_concept: what the trained model sees on the erase term when it differs from
            ``erase_from`` / ``concept`` (adversarial prompts), else None.
        trained: each role's condition as the trained model sees it, where it differs from the
            frozen model's (a trained text encoder re-encodes every role, with grad), by role
            (``"concept"``, ``"null"``, ``"erase_from"``, ``"preserve"``, ``"anchor"``); None: the same
            conditions for both. Objectives read the trained side through `trained_cond`.
        anchor: for objectives with ``uses_anchor``, the anchor prompt of each sample's concept
            prompt (row i of ``anchor`` is the anchor of row i of ``concept``: "a striped circle"
            -> "a dotted circle"), whose frozen trajectories ``x`` comes from; else None.
        teacher_eps: the frozen model's eps already known at the latents of a role, by role
            (``"null"``, ``"concept"``, ``"erase_from"`` at ``x``; ``"preserve_null"``,
            ``"preserve"`` at ``preserve_x``), e.g. recorded by the sampler that made them; an
            objective may use them instead of evaluating the teacher again. None: none known.
    """

    x: torch.Tensor
    sigma: torch.Tensor
    concept: Cond
    null: Cond
    erase_from: Cond | None = None
    preserve: Cond | None = None
    preserve_x: torch.Tensor | None = None
    preserve_sigma: torch.Tensor | None = None
    trained_concept: Cond | None = None
    anchor: Cond | None = None
    teacher_eps: dict[str, torch.Tensor] | None = None
    trained: dict[str, Cond] | None = None

    def trained_cond(self, role: str) -> Cond | None:
        """What the trained model sees for ``role`` (``"preserve"``, ``"null"``, ...): its entry in
        ``trained``, else the role's own condition."""
        if self.trained is not None and role in self.trained:
            return self.trained[role]
        return getattr(self, role)

    @property
    def erase_prompt(self) -> Cond:
        """What the trained model sees on the erase term: ``trained_concept``, else ``erase_from``,
        else ``concept`` (as the trained model sees them)."""
        if self.trained_concept is not None:
            return self.trained_concept
        return self.trained_cond("erase_from" if self.erase_from is not None else "concept")

    @property
    def preserve_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, sigma) the preserve prompt is checked on: its own trajectories' or the concept's."""
        if self.preserve_x is not None and self.preserve_sigma is not None:
            return self.preserve_x, self.preserve_sigma
        return self.x, self.sigma


@dataclass
class ObjectiveOutput:
    """``loss``: a scalar with grad; ``logs``: detached scalars, e.g. ``{"loss_erase": ...}``."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class PredictionObjective(ABC):
    """Contract: ``objective(student, teacher, batch) -> ObjectiveOutput``.

    ``teacher`` is called without grad; ``student`` with grad. Implementations batch their
    prompt roles (`batched_calls`) so each model runs once per step.

    ``uses_anchor``: the objective reads `ErasureBatch.anchor`; the engine then pairs every
    concept prompt with its anchor prompt and samples x_t from the anchor prompts (and refuses
    anchor settings for objectives without it).
    """

    name: str = ""
    uses_anchor: bool = False

    @abstractmethod
    def __call__(self, student: EpsFn, teacher: EpsFn, batch: ErasureBatch) -> ObjectiveOutput: ...

    def metadata(self) -> dict[str, Any]:
        """Settings recorded in the exported weights' metadata."""
        return {}


class TrajectoryObjective(ABC):
    """Contract: ``trajectory_loss(x_masked, x_target, n_erase)`` on final latents (B, C, H, W),
    differentiated through the sampler by the engine, and ``regulariser(masks)`` on the masks
    alone (already weighted; a scalar)."""

    @abstractmethod
    def trajectory_loss(self, x_masked: torch.Tensor, x_target: torch.Tensor, n_erase: int) -> ObjectiveOutput: ...

    @abstractmethod
    def regulariser(self, masks: nn.Module) -> torch.Tensor: ...


class DistillationObjective(nn.Module, ABC):
    """Contract: ``generator_loss(x_hat, cond, uc)`` on generator samples x̂ (B, C, H, W) and
    ``critic_loss(x_hat, cond, real)`` on sg(x̂) (``real``: (images, their cond) or None).
    The module owns its trainable parts (``trainable_parameters``)."""

    @abstractmethod
    def generator_loss(self, x_hat: torch.Tensor, cond: Cond, uc: Cond | None) -> ObjectiveOutput: ...

    @abstractmethod
    def critic_loss(
        self, x_hat: torch.Tensor, cond: Cond, real: tuple[torch.Tensor, Cond] | None = None
    ) -> ObjectiveOutput: ...

    @property
    def needs_real_images(self) -> bool:
        """Whether ``critic_loss`` needs ``real`` (e.g. a GAN head)."""
        return False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def batched_calls(
    eps_fn: EpsFn, calls: Mapping[str, tuple[torch.Tensor, torch.Tensor, Cond]]
) -> dict[str, torch.Tensor]:
    """``{role: eps_fn(x, sigma, cond)}`` for ``calls = {role: (x, sigma, cond)}`` in one batched
    call, concatenated in the order of ``calls``."""
    sizes = [x.shape[0] for x, _, _ in calls.values()]
    out = eps_fn(
        torch.cat([x for x, _, _ in calls.values()]),
        torch.cat([s for _, s, _ in calls.values()]),
        cat_conds([c for _, _, c in calls.values()]),
    )
    return dict(zip(calls, out.split(sizes)))


def cat_conds(conds: Sequence[Cond]) -> dict[str, Any]:
    """Concatenate condition dicts along the batch: k dicts of (B, ...) -> one of (k B, ...).

    Keys must match; non-tensor values must be equal and are kept once.
    """
    if not conds:
        raise ValueError("cat_conds: no condition dicts given")
    if any(set(c) != set(conds[0]) for c in conds):
        raise ValueError(f"condition dicts have different keys: {[sorted(c) for c in conds]}")
    out: dict[str, Any] = {}
    for key, value in conds[0].items():
        values = [c[key] for c in conds]
        if torch.is_tensor(value):
            out[key] = torch.cat(values, dim=0)
        else:
            if any(v != value for v in values):
                raise ValueError(f"condition {key!r}: non-tensor values differ across prompts")
            out[key] = value
    return out


def repeat_batch(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, ...) -> (k B, ...): ``x`` stacked k times along the batch (matches `cat_conds` order)."""
    return x.repeat(k, *([1] * (x.ndim - 1)))
