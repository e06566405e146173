"""Erasure and distillation objectives, one per file, sharing `ErasureObjective`'s call shape."""

from unlearn.objectives.base import EpsFn, ErasureBatch, ErasureObjective, ObjectiveOutput, cat_conds, repeat_batch
from unlearn.objectives.esd import ESDObjective, esd_target, preserve_target

__all__ = [
    "EpsFn",
    "ErasureBatch",
    "ErasureObjective",
    "ObjectiveOutput",
    "cat_conds",
    "repeat_batch",
    "ESDObjective",
    "esd_target",
    "preserve_target",
]
