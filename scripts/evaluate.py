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
import sys
from pathlib import Path

log = logging.getLogger("unlearn.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model (one of --run, --ckpt, --config; --config may add to the others)")
    src.add_argument("--run", help="a run directory (its saved config and newest last.ckpt)")
    src.add_argument("--ckpt", help="a Lightning checkpoint")
    src.add_argument("--config", nargs="*", default=[], help="model config files, merged left to right")
    src.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    src.add_argument("--masks", help="a mask file (masks.safetensors of a mask-erasure run) to apply")
    src.add_argument("--weights", help="erased weights (erased.safetensors of an ESD run) to apply")
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
    from unlearn.engine.loading import load_model
    from unlearn.eval.judge import load_judge
    from unlearn.eval.report import metrics_markdown
    from unlearn.eval.toy_benchmark import run_toy_benchmark

    for concept in args.concept:
        CANVAS.concept_kind(concept)  # an unknown name fails before any model is built
    judge = load_judge(args.judge)
    model = load_model(args.config, run=args.run, ckpt=args.ckpt, overrides=args.set,
                       masks=args.masks, weights=args.weights).to(args.device)
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
