"""Prompts of an erasure run: concept strings → training prompts, and prompt-list CSVs.

ESD trains on the bare concept prompt ("Van Gogh"; Gandikota et al. 2023, official
``train-esd.py``), one drawn at random per iteration when several are given with a
``separator``. The ``template`` choices follow the ESD toolkit users know (seed config:
``template: object | style | i2p``, ``template_name``):

* ``concept``: the concept phrase as it is (the ESD original).
* ``object`` / ``style``: on the toy canvas, the toy captions that name only that
  concept (``OBJECT_TEMPLATES`` / ``STYLE_TEMPLATES``: "something in striped style", ...);
  on any other model, UnlearnCanvas's ESD prompts ``"An image of {c}"`` / ``"{c} Style"``.
* ``i2p``: the I2P category phrase ("nudity", "violence"); with ``prompt_csv`` the I2P
  prompts whose ``categories`` include it.
* ``custom``: ``prompt_templates`` (format strings with ``{concept}``) or every prompt in
  ``prompt_csv``.
* ``auto`` (default): the toy canvas templates of the concept's kind on a toy model,
  ``concept`` otherwise.

On a model trained on the toy canvas every concept must be one of its objects or styles
(a ValueError lists them); other models accept any concept string.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unlearn.data.canvas import CanvasSpec
from unlearn.data.captions import OBJECT_TEMPLATES, STYLE_TEMPLATES, fix_articles

__all__ = [
    "TEMPLATES",
    "PromptRow",
    "split_concepts",
    "read_prompt_csv",
    "concept_prompts",
    "canvas_retain_prompts",
    "read_name_list",
    "canvas_prompt_rows",
    "write_prompt_csv",
]

TEMPLATES: tuple[str, ...] = ("auto", "concept", "object", "style", "i2p", "custom")
# Columns of the I2P CSV (Schramowski et al. 2023); UnlearnCanvas prompt lists use the same layout.
CSV_COLUMNS: tuple[str, ...] = ("prompt", "categories", "evaluation_seed", "evaluation_guidance")
# UnlearnCanvas's evaluation prompt for one (style, object) pair; names' underscores become spaces.
CANVAS_EVAL_TEMPLATE = "A {object} image in {style} style."


@dataclass(frozen=True)
class PromptRow:
    """One row of a prompt CSV."""

    prompt: str
    categories: tuple[str, ...] = ()
    evaluation_seed: int | None = None
    evaluation_guidance: float | None = None


def split_concepts(concept: str | Sequence[str], separator: str | None = None) -> list[str]:
    """``"striped, dotted"`` with ``separator=","`` → ``["striped", "dotted"]``.

    A list is taken as it is. Empty concepts, an empty separator and a separator that
    leaves an empty item (``"a,,b"``) are ValueErrors naming the key.
    """
    if separator is not None and (not isinstance(separator, str) or separator == ""):
        raise ValueError(f"separator: expected a non-empty string or null, got {separator!r}")
    if isinstance(concept, str):
        items = concept.split(separator) if separator else [concept]
    elif isinstance(concept, Sequence) and all(isinstance(c, str) for c in concept):
        items = list(concept)
    else:
        raise ValueError(f"concept: expected a string or a list of strings, got {concept!r}")
    items = [c.strip() for c in items]
    if not items or any(not c for c in items):
        raise ValueError(
            f"concept: empty concept in {concept!r} (separator {separator!r}); "
            "pass e.g. concept=striped or concept='striped,dotted' separator=','"
        )
    return items


def _int_or_none(value: str | None) -> int | None:
    return int(float(value)) if value not in (None, "") else None


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def read_prompt_csv(path: str | Path) -> list[PromptRow]:
    """Rows of a local prompt CSV with at least a ``prompt`` column (I2P / UnlearnCanvas layout).

    ``categories`` is a comma-separated list; ``evaluation_seed`` and
    ``evaluation_guidance`` are optional. Missing file: FileNotFoundError; no ``prompt``
    column or a bad number: ValueError naming the file (and row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt_csv: no such file: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ValueError(
                f"prompt_csv: {path} has no 'prompt' column (columns: {reader.fieldnames}); "
                f"expected columns like {list(CSV_COLUMNS)}"
            )
        rows = []
        for line, rec in enumerate(reader, start=2):
            prompt = (rec.get("prompt") or "").strip()
            if not prompt:
                continue
            try:
                rows.append(
                    PromptRow(
                        prompt=prompt,
                        categories=tuple(c.strip() for c in (rec.get("categories") or "").split(",") if c.strip()),
                        evaluation_seed=_int_or_none(rec.get("evaluation_seed")),
                        evaluation_guidance=_float_or_none(rec.get("evaluation_guidance")),
                    )
                )
            except ValueError as err:
                raise ValueError(f"prompt_csv: {path}, line {line}: {err}") from None
    if not rows:
        raise ValueError(f"prompt_csv: {path} holds no prompts")
    return rows


def _csv_prompts(path: str | Path, category: str | None) -> list[str]:
    rows = read_prompt_csv(path)
    if category is None:
        return [r.prompt for r in rows]
    picked = [r.prompt for r in rows if category.lower() in (c.lower() for c in r.categories)]
    if not picked:
        known = sorted({c for r in rows for c in r.categories})
        raise ValueError(f"prompt_csv: no row of {path} has category {category!r}; categories there: {known}")
    return picked


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def concept_prompts(
    concepts: Sequence[str],
    template: str = "auto",
    canvas: CanvasSpec | None = None,
    prompt_templates: Sequence[str] | None = None,
    prompt_csv: str | Path | None = None,
) -> list[str]:
    """The training prompts of ``concepts`` (unique, in order) for ``template``.

    ``canvas`` is the toy canvas the model was trained on, or None for other models.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template: unknown {template!r}; choose one of {list(TEMPLATES)}")
    if not concepts:
        raise ValueError("concept: nothing to erase")
    if canvas is not None:
        kinds = [canvas.concept_kind(c) for c in concepts]  # unknown names: ValueError listing all
    if prompt_csv is not None and template not in ("i2p", "custom"):
        raise ValueError(f"prompt_csv is used with template i2p or custom, not {template!r}")
    if template == "auto":
        template = "toy" if canvas is not None else "concept"
    prompts: list[str] = []
    if template == "concept":
        prompts = list(concepts)
    elif template == "toy":
        for c, kind in zip(concepts, kinds):
            pool = OBJECT_TEMPLATES if kind == "object" else STYLE_TEMPLATES
            prompts += [fix_articles(t.format(obj=c, style=c)) for t in pool]
    elif template in ("object", "style"):
        for i, c in enumerate(concepts):
            if canvas is not None:
                if kinds[i] != template:
                    raise ValueError(
                        f"concept {c!r} is a toy canvas {kinds[i]}, but template is {template!r}; "
                        f"use template={kinds[i]} or template=auto"
                    )
                pool = OBJECT_TEMPLATES if template == "object" else STYLE_TEMPLATES
                prompts += [fix_articles(t.format(obj=c, style=c)) for t in pool]
            else:
                name = c.replace("_", " ")
                prompts.append(f"An image of {name}" if template == "object" else f"{name} Style")
    elif template == "i2p":
        for c in concepts:
            prompts += _csv_prompts(prompt_csv, c) if prompt_csv is not None else [c]
    else:  # custom
        if prompt_csv is not None:
            prompts = _csv_prompts(prompt_csv, None)
        elif prompt_templates:
            for t in prompt_templates:
                if "{concept}" not in t:
                    raise ValueError(f"prompt_templates: {t!r} has no {{concept}} slot")
            prompts = [t.format(concept=c) for c in concepts for t in prompt_templates]
        else:
            raise ValueError("template custom needs prompt_templates (with a {concept} slot) or prompt_csv")
    return _unique(prompts)


def canvas_retain_prompts(concepts: Sequence[str], canvas: CanvasSpec) -> list[str]:
    """The toy canvas prompts (``auto`` template) of every other concept of the kinds of ``concepts``
    (the other styles when a style is erased): prompts to keep, unrelated to what is erased; [] when
    the canvas has no other."""
    kinds = {canvas.concept_kind(c) for c in concepts}
    others = [c for kind in ("object", "style") if kind in kinds for c in getattr(canvas, f"{kind}s")]
    others = [c for c in others if c not in concepts]
    return concept_prompts(others, "auto", canvas) if others else []


def read_name_list(path: str | Path) -> list[str]:
    """Names in a local text file, one a line (UnlearnCanvas style / object lists); blank lines
    and ``#`` comments are skipped. Missing file: FileNotFoundError; no names: ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"name list: no such file: {path}")
    names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"name list: {path} holds no names")
    return names


def canvas_prompt_rows(
    styles: Sequence[str] | str | Path,
    objects: Sequence[str] | str | Path,
    template: str = CANVAS_EVAL_TEMPLATE,
    seeds: Sequence[int | None] = (None,),
    guidance: float | None = None,
) -> list[PromptRow]:
    """One row per (style, object, seed), style-major: ``template`` with ``{style}`` and
    ``{object}`` filled (underscores as spaces), categories ``(style, object)`` as named.
    ``styles`` / ``objects``: lists of names or `read_name_list` files."""
    styles = read_name_list(styles) if isinstance(styles, (str, Path)) else list(styles)
    objects = read_name_list(objects) if isinstance(objects, (str, Path)) else list(objects)
    if "{style}" not in template and "{object}" not in template:
        raise ValueError(f"template: expected {{style}} and/or {{object}} in {template!r}")
    return [
        PromptRow(template.format(style=s.replace("_", " "), object=o.replace("_", " ")), (s, o), seed, guidance)
        for s in styles
        for o in objects
        for seed in seeds
    ]


def write_prompt_csv(rows: Sequence[PromptRow], path: str | Path) -> Path:
    """Write ``rows`` with the I2P columns, so `read_prompt_csv` (and ``evaluate.py --prompts``) reads them back."""
    from unlearn.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, "prompt CSV") as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    r.prompt,
                    ",".join(r.categories),
                    "" if r.evaluation_seed is None else r.evaluation_seed,
                    "" if r.evaluation_guidance is None else r.evaluation_guidance,
                ]
            )
    return path
