#!/usr/bin/env python
"""Toy benchmark: generate every (object, style) prompt with fixed seeds, judge, report.

    python scripts/evaluate.py --config configs/models/toy_canvas.yaml --out metrics.json
    python scripts/evaluate.py --run logs/<run> --concept striped --out logs/<run>/eval/metrics.json
    python scripts/evaluate.py --config <sd15.yaml> --set model_path=... --weights erased.safetensors \
        --prompts i2p.csv --categories sexual --nudity --out i2p_eval/metrics.json

Writes ``metrics.json`` (UA, IRA, CRA, FD, object/style/joint accuracy in percent and a
per-concept table), ``metrics.md`` and ``grid.png`` (rows objects, columns styles) in the
folder of ``--out``, and prints the markdown table.

With ``--prompts FILE.csv`` (I2P / UnlearnCanvas layout: prompt, categories, evaluation_seed,
evaluation_guidance) it instead generates ``--images-per-prompt`` images per row with the
row's seed and guidance (else ``--seed`` + k and ``--guidance-scale`` / the config's) into
``images/`` beside ``--out``, echoes them in ``prompts.csv`` and, with ``--nudity``, writes
the NudeNet nudity rate (classes and threshold stated) into the metrics json
(`unlearn.eval.prompt_benchmark`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unlearn.scripting import add_model_arguments, json_output, load_model_from_args, run_script

log = logging.getLogger("unlearn.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument(
        "--concept",
        action="append",
        default=[],
        help="an erased concept (repeat for several); none evaluates a base model",
    )
    p.add_argument("--judge", default="checkpoints/toy/judge.safetensors", help="judge weights")
    p.add_argument("--out", default="metrics.json", help="metrics.json path; metrics.md and grid.png go beside it")
    p.add_argument("--images-per-prompt", type=int, default=None, help="default 4 (toy benchmark), 1 (--prompts)")
    p.add_argument("--seed", type=int, default=0, help="image k of every prompt uses seed + k")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--sampler", default=None, help="euler, euler_a, heun, dpmpp_2m or ddim")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    bench = p.add_argument_group("prompt CSV (instead of the toy benchmark)")
    bench.add_argument("--prompts", help="a prompt CSV (prompt, categories, evaluation_seed, evaluation_guidance)")
    bench.add_argument("--categories", help="comma-separated categories; keep only rows with one of them")
    bench.add_argument("--nudity", action="store_true", help="NudeNet nudity rate of the images")
    bench.add_argument(
        "--nudity-classes", default="exposed", help="exposed (default), sexual, or comma-separated NudeNet labels"
    )
    bench.add_argument("--nudity-threshold", type=float, default=None, help="minimum detection score (default 0.6)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = json_output(args.out)
    if args.prompts:
        return _prompt_benchmark(args, out)

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
        model,
        erased=args.concept,
        judge=judge,
        out_dir=out.parent,
        images_per_prompt=args.images_per_prompt or 4,
        batch_size=args.batch_size,
        sampler=sampler,
        seed=args.seed,
        model_concepts=concepts,
    )
    if out.name != "metrics.json":
        (out.parent / "metrics.json").replace(out)
    print(metrics_markdown(metrics))
    return metrics


def _prompt_benchmark(args: argparse.Namespace, out: Path) -> dict:
    from unlearn.eval.prompt_benchmark import run_prompt_benchmark

    if not Path(args.prompts).is_file():  # before any model is built
        raise FileNotFoundError(f"--prompts: no such file: {args.prompts}")
    classes = args.nudity_classes if args.nudity_classes in ("exposed", "sexual") else args.nudity_classes.split(",")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_model_from_args(args, args.device)
    metrics = run_prompt_benchmark(
        model,
        args.prompts,
        out,
        categories=args.categories.split(",") if args.categories else None,
        nudity=args.nudity,
        nudity_classes=classes,
        nudity_threshold=args.nudity_threshold,
        images_per_prompt=args.images_per_prompt or 1,
        seed=args.seed,
        sampler=args.sampler,
        num_steps=args.steps,
        guidance_scale=args.guidance_scale,
        batch_size=args.batch_size,
    )
    summary = f"{metrics['num_images']} images for {metrics['num_prompts']} prompts -> {out.parent / 'images'}"
    if "nudity" in metrics:
        n = metrics["nudity"]
        summary += (
            f"; nudity rate {100 * n['nudity_rate']:.2f}% ({n['num_nude']}/{n['num_images']}, "
            f"threshold {n['threshold']}, classes {', '.join(n['classes'])})"
        )
    print(summary)
    return metrics


if __name__ == "__main__":
    run_script(main)
