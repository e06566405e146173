"""Closed-form weight editors, one per file, each subclassing `unlearn.editors.base.WeightEditor`:
`UCEEditor` (Unified Concept Editing). The engine that runs them is
`unlearn.engine.closed_form.ClosedFormEngine`."""

from unlearn.editors.base import EditOutput, EditPrompts, TextEncoder, TextRows, WeightEditor
from unlearn.editors.uce import TOKEN_ROWS, UCEEditor, aligned_rows, uce_weight

__all__ = [
    "EditOutput",
    "EditPrompts",
    "TextEncoder",
    "TextRows",
    "WeightEditor",
    "TOKEN_ROWS",
    "UCEEditor",
    "aligned_rows",
    "uce_weight",
]
