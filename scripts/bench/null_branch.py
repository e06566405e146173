#!/usr/bin/env python
"""How much of an erasure CFG's null branch undoes: the toy benchmark with the original's null.

    python scripts/bench/null_branch.py --weights <run>/erased.safetensors --concept circle \\
        --out <run>/null_branch.json

CFG samples D(∅) + s (D(c) − D(∅)) with both predictions from the fine-tuned model. ESD trains
only D(c) towards a target built from the *original* D(∅); tensors that see no text (ESD-u)
move the fine-tuned D(∅) too, and what draws the concept is the guided difference. This runs
the toy benchmark twice on the same prompts and seeds: as sampled (the erased model in both
branches) and with the original model's null branch (the erased model only for D(c)). UA
much higher with the original's null than as sampled means the fine-tuned null prediction
moved with the concept's and cancelled the erasure (ESD's ``null_weight`` anchors it). Writes
``--out`` (JSON: both rows of UA, IRA, CRA, FD and accuracies) and a markdown table beside it,
and each run's ``metrics.json`` / ``grid.png`` under ``<out stem>/as_sampled`` and
``<out stem>/original_null``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unlearn.scripting import json_output, run_script

MODES = ("as_sampled", "original_null")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="*", default=["configs/models/toy_canvas.yaml"], help="model config files")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    p.add_argument("--weights", required=True, help="erased.safetensors of an ESD run")
    p.add_argument("--concept", action="append", required=True, help="the erased concept (repeat for several)")
    p.add_argument("--judge", default="checkpoints/toy/judge.safetensors")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the config's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="a .json file")
    return p


def original_null_denoiser(original, erased):
    """``denoise(x, sigma, cond)`` for a CFG batch stacked [uc; c] (`VanillaCFG`): the uc half
    from ``original``, the c half from ``erased``."""
    import torch

    null_fn, concept_fn = original.denoise, erased.denoise  # bound before ``erased.denoise`` is replaced

    def rows(cond: dict[str, Any], part: slice) -> dict[str, Any]:
        return {k: v[part] if torch.is_tensor(v) else v for k, v in cond.items()}

    def denoise(x, sigma, cond):
        half = x.shape[0] // 2
        null, concept = slice(None, half), slice(half, None)
        return torch.cat([null_fn(x[null], sigma[null], rows(cond, null)),
                          concept_fn(x[concept], sigma[concept], rows(cond, concept))])

    return denoise


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = json_output(args.out)

    from unlearn.data.canvas import CANVAS
    from unlearn.diffusion.guiders import VanillaCFG
    from unlearn.engine.loading import load_model
    from unlearn.eval.judge import load_judge
    from unlearn.eval.toy_benchmark import run_toy_benchmark

    for concept in args.concept:
        CANVAS.concept_kind(concept)  # an unknown name fails before any model is built
    judge = load_judge(args.judge)
    original = load_model(args.config, overrides=args.set).eval()
    erased = load_model(args.config, overrides=args.set, weights=args.weights).eval()
    sampler = erased.make_sampler(None, args.steps, args.guidance_scale)
    if type(sampler.guider) is not VanillaCFG or sampler.guider.scale == 1.0:
        raise ValueError(f"--guidance-scale: the null branch is only sampled under CFG with a scale other than 1 "
                         f"(VanillaCFG); the sampler's guider is {type(sampler.guider).__name__}"
                         f"{f' at scale {sampler.guider.scale:g}' if hasattr(sampler.guider, 'scale') else ''}")
    rows: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        if mode == "original_null":
            erased.denoise = original_null_denoiser(original, erased)  # instance attribute: generate() calls it
        metrics = run_toy_benchmark(erased, erased=args.concept, judge=judge, out_dir=out.parent / out.stem / mode,
                                    images_per_prompt=args.images_per_prompt, batch_size=args.batch_size,
                                    sampler=sampler, model_concepts=erased.canvas_concepts)
        rows[mode] = {k: metrics[k] for k in ("UA", "IRA", "CRA", "FD", "object_acc", "style_acc", "joint_acc")}
        print(mode, {k: round(v, 1) for k, v in rows[mode].items()}, flush=True)

    result = {"weights": args.weights, "concepts": args.concept, "config": args.config,
              "images_per_prompt": args.images_per_prompt, "guidance_scale": sampler.guider.scale, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    keys = list(rows[MODES[0]])
    lines = [f"Null branch of `{args.weights}` (erased: {', '.join(args.concept)}; CFG {sampler.guider.scale:g}, "
             f"{args.images_per_prompt} images per prompt): the erased model in both CFG branches (as sampled) "
             "and with the original model's null branch.", "",
             "| null branch | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {mode} | " + " | ".join(f"{rows[mode][k]:.1f}" for k in keys) + " |" for mode in MODES]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    run_script(main)
