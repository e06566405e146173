"""Erasure and distillation objectives, one per file, each subclassing its role's contract
in `unlearn.objectives.base`: `PredictionObjective` (ESD, concept ablation), `TrajectoryObjective`
(minimalist masks), `DistillationObjective` (DMD2)."""

from unlearn.objectives.ablation import ConceptAblationObjective
from unlearn.objectives.base import (
    Cond,
    DistillationObjective,
    EpsFn,
    ErasureBatch,
    ObjectiveOutput,
    PredictionObjective,
    TrajectoryObjective,
    batched_calls,
    cat_conds,
    repeat_batch,
)
from unlearn.objectives.dmd2 import DMD2Objective
from unlearn.objectives.esd import ESDObjective, esd_target, preserve_target
from unlearn.objectives.minimalist import MinimalistObjective

__all__ = [
    "Cond",
    "EpsFn",
    "ErasureBatch",
    "ObjectiveOutput",
    "PredictionObjective",
    "TrajectoryObjective",
    "DistillationObjective",
    "batched_calls",
    "cat_conds",
    "repeat_batch",
    "ConceptAblationObjective",
    "DMD2Objective",
    "ESDObjective",
    "MinimalistObjective",
    "esd_target",
    "preserve_target",
]
