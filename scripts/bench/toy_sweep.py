#!/usr/bin/env python
"""Erase every concept of one kind in turn and average, as UnlearnCanvas reports a method.

    python scripts/bench/toy_sweep.py --method configs/methods/esd_x.yaml --kind object \\
        --out scripts/bench/results/toy/sweep_esd_u --set train_method=noxattn [lr=2e-4] [--concepts star moon]

For each concept: ``main.py --base <model> <method> concept=<c> <--set ...>`` (its run under
``OUT/runs``), then ``scripts/evaluate.py`` on the run's ``erased.safetensors`` (ESD) or
``masks.safetensors`` (minimalist masks) against that concept. One concept's UA/IRA/CRA
depends on which concept it is (a shape the judge gives to any round blob is hard to
"un-recognise"); the mean over all of a kind does not depend on a pick. The base model is
evaluated once and its figures against each concept come from its per-concept accuracies
(`unlearn.eval.metrics.metrics_against`). Writes ``OUT/sweep.json`` and ``OUT/sweep.md``
(per-concept rows, the mean, the base's mean, and where the base model fails to draw some
concepts, the same means over the concepts it draws). A concept whose ``metrics.json`` exists is
skipped, so an interrupted sweep continues where it stopped.

Whether a result holds beyond the draws that produced it: ``--train-seed`` (main.py's
``--seed``, default 23) repeats the erasures on other training draws, and ``--heldout-seed N``
also judges every erasure and the base model on images the benchmark never draws (image k of a
prompt from seed N + k instead of k; ``OUT/eval_seed<N>/``), a second table beside the first.
It can be added to a finished sweep: the saved runs are evaluated again, nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from unlearn.atomic import atomic_write_text
from unlearn.eval.metrics import HEADLINE
from unlearn.scripting import run_script

ARTIFACTS = {"erased.safetensors": "--weights", "masks.safetensors": "--masks"}
# A concept counts as drawn by the base model when the judge recognises it in at least this
# share of the base model's images of it; the sweep adds a mean over those concepts alone.
DRAWN_MIN_ACCURACY = 50.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, help="method config, e.g. configs/methods/esd_x.yaml")
    p.add_argument("--kind", required=True, choices=["object", "style"])
    p.add_argument("--model", default="configs/models/toy_canvas.yaml")
    p.add_argument("--concepts", nargs="+", default=None, help="default: every concept of --kind")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for main.py")
    p.add_argument("--images", type=int, default=4, help="images per (object, style) prompt")
    p.add_argument(
        "--anchor-next",
        action="store_true",
        help="mask erasure: anchor each concept to the next one of its kind in the canvas order "
        "(model.params.deconcept_anchor; the last wraps to the first), a rule fixed for every "
        "concept rather than a pick per concept",
    )
    p.add_argument(
        "--anchors",
        default=None,
        metavar="JSON",
        help='mask erasure: anchor each concept to the one named in this file\'s "anchors" '
        "(scripts/bench/nearest_anchor.py: the nearest as the original model draws them)",
    )
    p.add_argument(
        "--train-seed", type=int, default=None, help="main.py --seed for every erasure (default: main.py's own, 23)"
    )
    p.add_argument(
        "--heldout-seed",
        type=int,
        default=None,
        help="also evaluate on the images of seeds N, N+1, ... (the benchmark's start at 0)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--python", default=sys.executable)
    return p


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            tail = log.read_text().splitlines()[-20:]
            raise RuntimeError(f"{' '.join(cmd)} failed; last lines of {log}:\n" + "\n".join(tail))


def evaluate(args, out: Path, model_args: list[str], concept: str | None, seed: int | None = None) -> dict[str, Any]:
    """``scripts/evaluate.py`` into ``out`` unless it is there; ``seed``: its first image seed."""
    if not out.is_file():
        cmd = [
            args.python,
            "scripts/evaluate.py",
            *model_args,
            "--images-per-prompt",
            str(args.images),
            "--out",
            str(out),
        ] + (["--concept", concept] if concept else [])
        if seed is not None:
            cmd += ["--seed", str(seed)]
        _run(cmd, out.parent / "evaluate.log")
    return json.loads(out.read_text())


def erase(args, concept: str, out_dir: Path, extra: list[str]) -> tuple[Path, float]:
    """Train one erasure (``extra``: this concept's own overrides); returns its run directory and
    the training seconds."""
    name = f"sweep_{concept}"
    seed = [] if args.train_seed is None else ["--seed", str(args.train_seed)]
    t0 = time.monotonic()
    _run(
        [
            args.python,
            "main.py",
            "--base",
            args.model,
            args.method,
            f"concept={concept}",
            "lightning.callbacks.toy_benchmark=null",
            *args.set,
            *extra,
            "--name",
            name,
            "--logdir",
            str(out_dir / "runs"),
            *seed,
        ],
        out_dir / "runs" / f"{name}.log",
    )
    seconds = time.monotonic() - t0
    return latest_run(out_dir, concept), seconds


def latest_run(out_dir: Path, concept: str) -> Path:
    """The newest run directory the sweep in ``out_dir`` trained for ``concept``."""
    runs = sorted(path for path in (out_dir / "runs").glob(f"*_sweep_{concept}") if path.is_dir())
    if not runs:
        # a missing run is bad input (e.g. --heldout-seed on a sweep whose runs were deleted), not a crash
        raise FileNotFoundError(
            f"no run directory {out_dir / 'runs'}/*_sweep_{concept} (--heldout-seed evaluates the saved runs again)"
        )
    return runs[-1]


def concept_anchors(args, universe: list[str], concepts: list[str]) -> dict[str, str] | None:
    """Each concept's ``model.params.deconcept_anchor`` under ``--anchor-next`` or ``--anchors``;
    None without either."""
    if args.anchor_next and args.anchors:
        raise ValueError("--anchor-next and --anchors: choose one anchor rule")
    if args.anchor_next:
        return {c: universe[(universe.index(c) + 1) % len(universe)] for c in concepts}
    if not args.anchors:
        return None
    path = Path(args.anchors)
    if not path.is_file():
        raise FileNotFoundError(f"--anchors: no such file: {path}")
    try:
        anchors = json.loads(path.read_text())["anchors"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f'--anchors {path}: expected the JSON of scripts/bench/nearest_anchor.py with an "anchors" mapping ({err})'
        ) from err
    missing = [c for c in concepts if c not in anchors]
    if missing:
        raise ValueError(f"--anchors {path}: no anchor for {missing}")
    bad = {c: anchors[c] for c in concepts if anchors[c] not in universe or anchors[c] == c}
    if bad:
        raise ValueError(f"--anchors {path}: {bad} are not other {args.kind}s of {universe}")
    return {c: anchors[c] for c in concepts}


def artifact_args(run_dir: Path) -> list[str]:
    for filename, flag in ARTIFACTS.items():
        if (run_dir / filename).is_file():
            return [flag, str(run_dir / filename)]
    raise FileNotFoundError(f"{run_dir}: no {' or '.join(ARTIFACTS)} (the method's output)")


def mean_row(rows: list[dict[str, Any]]) -> dict[str, float]:
    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        return sum(values) / len(values) if values else float("nan")

    return {key: mean(key) for key in (*HEADLINE, "train_s") if any(key in r for r in rows)}


def markdown(result: dict[str, Any]) -> str:
    def fmt(v):
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.1f}"

    anchor = " --anchor-next (each concept anchored to the next of its kind)" if result.get("anchor_next") else ""
    if result.get("anchors_file"):
        anchor = f" --anchors {result['anchors_file']} (each concept anchored to the one named there)"

    def row_name(row):  # "circle → square" for an anchored erasure
        return f"{row['concept']} → {row['anchor']}" if "anchor" in row else row["concept"]

    seed = "" if result.get("train_seed") is None else f", training seed {result['train_seed']}"
    lines = [
        f"Erasing each {result['kind']} in turn: `{result['method']}` {' '.join(result['overrides'])}{anchor}".rstrip(),
        f"on `{result['model']}`, {result['images_per_prompt']} images per prompt{seed}.",
        "",
        "| concept | UA | IRA | CRA | FD | train s | base UA / IRA / CRA |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["concepts"]:
        b = r["base"]
        lines.append(
            f"| {row_name(r)} | {fmt(r['UA'])} | {fmt(r['IRA'])} | {fmt(r['CRA'])} | {fmt(r['FD'])} | "
            f"{fmt(r['train_s'])} | {fmt(b['UA'])} / {fmt(b['IRA'])} / {fmt(b['CRA'])} |"
        )
    means = [("mean", result["mean"], result["base_mean"])]
    if result["drawn"] != [r["concept"] for r in result["concepts"]]:
        means.append((f"mean, drawn ({len(result['drawn'])})", result["mean_drawn"], result["base_mean_drawn"]))
    for label, m, b in means:
        lines.append(
            f"| **{label}** | **{fmt(m.get('UA'))}** | **{fmt(m.get('IRA'))}** | **{fmt(m.get('CRA'))}** | "
            f"{fmt(m.get('FD'))} | {fmt(m.get('train_s'))} | "
            f"{fmt(b.get('UA'))} / {fmt(b.get('IRA'))} / {fmt(b.get('CRA'))} |"
        )
    lines.append(f"\nBase model FD: {fmt(result['base_FD'])}.")
    if result.get("heldout_seed") is not None:
        lines += [
            "",
            f"On held-out images (image k of a prompt from seed {result['heldout_seed']} + k; "
            f"the table above, from k):",
            "",
            "| concept | UA | IRA | CRA | FD | base UA / IRA / CRA |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["concepts"]:
            h, b = r["heldout"], r["heldout_base"]
            lines.append(
                f"| {row_name(r)} | {fmt(h['UA'])} | {fmt(h['IRA'])} | {fmt(h['CRA'])} | {fmt(h['FD'])} | "
                f"{fmt(b['UA'])} / {fmt(b['IRA'])} / {fmt(b['CRA'])} |"
            )
        m, b = result["heldout_mean"], result["heldout_base_mean"]
        lines.append(
            f"| **mean** | **{fmt(m.get('UA'))}** | **{fmt(m.get('IRA'))}** | **{fmt(m.get('CRA'))}** | "
            f"{fmt(m.get('FD'))} | {fmt(b.get('UA'))} / {fmt(b.get('IRA'))} / {fmt(b.get('CRA'))} |"
        )
        lines.append(f"\nBase model FD on these images: {fmt(result['heldout_base_FD'])}.")
    if len(means) > 1:
        lines.append(
            f'"Drawn": the concepts the base model itself draws (its accuracy on the concept '
            f">= {DRAWN_MIN_ACCURACY:.0f}%): {', '.join(result['drawn']) or 'none'}. Erasing a concept the "
            f"base model never draws measures nothing, so its UA says nothing of the method."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from unlearn.data.canvas import CANVAS
    from unlearn.eval.metrics import metrics_against

    universe = list(CANVAS.objects if args.kind == "object" else CANVAS.styles)
    concepts = args.concepts or universe
    unknown = [c for c in concepts if c not in universe]
    if unknown:
        raise ValueError(f"--concepts: {unknown} are not {args.kind}s; choose from {universe}")
    for path in (args.model, args.method):
        if not Path(path).is_file():
            raise FileNotFoundError(f"config not found: {path}")
    anchors = concept_anchors(args, universe, concepts)
    out_dir = Path(args.out)
    base = evaluate(args, out_dir / "eval" / "base" / "metrics.json", ["--config", args.model], None)
    if args.heldout_seed is not None:
        heldout_dir = out_dir / f"eval_seed{args.heldout_seed}"
        heldout_base = evaluate(
            args, heldout_dir / "base" / "metrics.json", ["--config", args.model], None, args.heldout_seed
        )

    rows = []
    for concept in concepts:
        metrics_path = out_dir / "eval" / concept / "metrics.json"
        times_path = out_dir / "eval" / concept / "train_s.txt"
        if not metrics_path.is_file():
            extra = [f"model.params.deconcept_anchor={anchors[concept]}"] if anchors else []
            run_dir, seconds = erase(args, concept, out_dir, extra)
            times_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(times_path, f"{seconds:.0f}\n", "training time")
            evaluate(args, metrics_path, ["--config", args.model, *artifact_args(run_dir)], concept)
        m = json.loads(metrics_path.read_text())
        row = {
            "concept": concept,
            **({"anchor": anchors[concept]} if anchors else {}),
            **{k: m.get(k) for k in HEADLINE},
            "train_s": float(times_path.read_text()) if times_path.is_file() else None,
            "base": metrics_against(base["per_concept"], [concept]),
        }
        if args.heldout_seed is not None:
            h = evaluate(
                args,
                heldout_dir / concept / "metrics.json",
                ["--config", args.model, *artifact_args(latest_run(out_dir, concept))],
                concept,
                args.heldout_seed,
            )
            row["heldout"] = {k: h.get(k) for k in HEADLINE}
            row["heldout_base"] = metrics_against(heldout_base["per_concept"], [concept])
        rows.append(row)
        heldout = (
            ""
            if "heldout" not in row
            else "  held-out UA {UA:5.1f}  IRA {IRA:5.1f}  CRA {CRA:5.1f}".format(**row["heldout"])
        )
        print(
            f"{concept:10s} UA {row['UA']:5.1f}  IRA {row['IRA']:5.1f}  CRA {row['CRA']:5.1f}  FD {row['FD']:6.1f}"
            f"{heldout}",
            flush=True,
        )

    drawn = [r for r in rows if 100.0 - r["base"]["UA"] >= DRAWN_MIN_ACCURACY]
    result = {
        "method": args.method,
        "kind": args.kind,
        "model": args.model,
        "overrides": args.set,
        "anchor_next": args.anchor_next,
        "anchors_file": args.anchors,
        "images_per_prompt": args.images,
        "train_seed": args.train_seed,
        "concepts": rows,
        "mean": mean_row(rows),
        "base_mean": mean_row([r["base"] for r in rows]),
        "base_FD": base["FD"],
        "drawn": [r["concept"] for r in drawn],
        "mean_drawn": mean_row(drawn),
        "base_mean_drawn": mean_row([r["base"] for r in drawn]),
    }
    if args.heldout_seed is not None:
        result.update(
            heldout_seed=args.heldout_seed,
            heldout_mean=mean_row([r["heldout"] for r in rows]),
            heldout_base_mean=mean_row([r["heldout_base"] for r in rows]),
            heldout_base_FD=heldout_base["FD"],
        )
    atomic_write_text(out_dir / "sweep.json", json.dumps(result, indent=2) + "\n", "sweep")
    atomic_write_text(out_dir / "sweep.md", markdown(result), "sweep")
    print(markdown(result))
    return result


if __name__ == "__main__":
    run_script(main)
