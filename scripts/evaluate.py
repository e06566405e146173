#!/usr/bin/env python
"""Toy benchmark: generate every (object, style) prompt with fixed seeds, judge, report.

    python scripts/evaluate.py --config configs/models/toy_canvas.yaml --out metrics.json
    python scripts/evaluate.py --run logs/<run> --concept striped --out logs/<run>/eval/metrics.json

Writes ``metrics.json`` (UA, IRA, CRA, FD, object/style/joint accuracy in percent and a
per-concept table), ``metrics.md`` and ``grid.png`` (rows objects, columns styles) in the
folder of ``--out``, and prints the markdown table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unlearn.scripting import add_model_arguments, load_model_from_args, run_script

log = logging.getLogger("unlearn.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--concept", action="append", default=[],
                   help="an erased concept (repeat for several); none evaluates a base model")
    p.add_argument("--judge", default="checkpoints/toy/judge.safetensors", help="judge weights")
    p.add_argument("--out", default="metrics.json", help="metrics.json path; metrics.md and grid.png go beside it")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="image k of every prompt uses seed + k")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--sampler", default=None, help="euler, euler_a, heun, dpmpp_2m or ddim")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out must name a .json file, got {out}")

    from unlearn.data.canvas import CANVAS
    from unlearn.eval.judge import load_judge
    from unlearn.eval.report import metrics_markdown
    from unlearn.eval.toy_benchmark import run_toy_benchmark

    for concept in args.concept:
        CANVAS.concept_kind(concept)  # an unknown name fails before any model is built
    judge = load_judge(args.judge)
    model = load_model_from_args(args, args.device)
    sampler = model.make_sampler(args.sampler, args.steps, args.guidance_scale)
    concepts = getattr(model, "canvas_concepts", None)
    metrics = run_toy_benchmark(
        model, erased=args.concept, judge=judge, out_dir=out.parent, images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size, sampler=sampler, seed=args.seed, model_concepts=concepts,
    )
    if out.name != "metrics.json":
        (out.parent / "metrics.json").replace(out)
    print(metrics_markdown(metrics))
    return metrics


if __name__ == "__main__":
    run_script(main)
