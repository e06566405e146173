#!/usr/bin/env python
"""Choose a deconcept anchor for mask erasure: each toy concept's nearest other concept, as
the original model draws them.

    python scripts/bench/nearest_anchor.py --kind object \\
        --out scripts/bench/results/toy/nearest_anchor_object.json          # about 40 s on a CPU
    # one concept, with the anchor it picked:
    python main.py --base configs/models/toy_canvas.yaml configs/methods/minimalist.yaml \\
        concept=star model.params.deconcept_anchor=triangle
    # every concept, each with its own anchor:
    python scripts/bench/toy_sweep.py --method configs/methods/minimalist.yaml --kind object \\
        --anchors scripts/bench/results/toy/nearest_anchor_object.json --out <dir>

Concept ablation maps a concept onto an anchor of the same kind ("a striped circle" ->
"a striped square", ``model.params.deconcept_anchor``) instead of the paper's "a striped
object". Which anchor is a choice; this script makes it with the original model alone,
before any erasure and without the judge. For every (other attribute, template, seed) it
draws each concept's prompt from the same noise with the trajectory sampler of
``configs/methods/minimalist.yaml`` (Euler, 10 steps, CFG 3; ``--sampler``, ``--steps``,
``--guidance-scale`` change it), and the distance between two concepts is the mean squared
difference of their final latents. That is the masks' erase loss at the start of training
with that anchor, so the nearest anchor is the one the original model is already closest
to drawing. ``--config`` / ``--set`` choose the model (any model with toy canvas metadata;
default the shipped toy model), ``--seeds`` the images per (other attribute, template).

Writes ``--out`` (JSON: the distances and each concept's nearest anchor, which
``toy_sweep.py --anchors`` reads) and the same as a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from unlearn.atomic import atomic_write_text
from unlearn.scripting import add_trajectory_arguments, canvas_spec_of, json_output, run_script

if TYPE_CHECKING:
    import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="*", default=["configs/models/toy_canvas.yaml"], help="model config files")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    p.add_argument("--kind", choices=["object", "style"], default="object")
    p.add_argument("--seeds", type=int, default=2, help="seeds per (other attribute, template)")
    add_trajectory_arguments(p)
    p.add_argument("--out", required=True, help="a .json file")
    return p


def pairwise_distances(latents: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Mean squared difference between every two concepts' latents, drawn from the same noise
    in the same order ((N, C, H, W) each); a concept is not its own anchor, so no diagonal."""
    names = list(latents)
    shapes = {tuple(latents[n].shape) for n in names}
    if len(shapes) != 1:
        raise ValueError(f"latents: every concept needs the same (N, C, H, W), got {sorted(shapes)}")
    return {a: {b: float((latents[a] - latents[b]).pow(2).mean()) for b in names if b != a} for a in names}


def nearest(distances: dict[str, dict[str, float]]) -> dict[str, str]:
    """Each concept's closest other concept (ties go to the earlier one in the canvas order)."""
    return {a: min(row, key=row.get) for a, row in distances.items()}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = json_output(args.out)

    import torch

    from unlearn.data.captions import JOINT_TEMPLATES, fill_template
    from unlearn.engine.loading import load_model

    model = load_model(args.config, overrides=args.set).eval()
    spec = canvas_spec_of(model, args.config)
    concepts, others = (spec.objects, spec.styles) if args.kind == "object" else (spec.styles, spec.objects)
    sampler = model.make_sampler(args.sampler, args.steps, args.guidance_scale)
    # seed i belongs to slot i = (other attribute, template, k) for every concept alike
    slots = [(o, t) for o in others for t in JOINT_TEMPLATES for _ in range(args.seeds)]
    latents = {}
    for concept in concepts:
        prompts = [fill_template(t, *((concept, o) if args.kind == "object" else (o, concept))) for o, t in slots]
        with torch.no_grad():
            latents[concept] = torch.cat(
                [
                    model.generate(
                        prompts[i : i + args.batch_size],
                        range(i, min(i + args.batch_size, len(prompts))),
                        sampler=sampler,
                        decode=False,
                    )
                    .float()
                    .cpu()
                    for i in range(0, len(prompts), args.batch_size)
                ]
            )
        print(f"{concept}: {len(prompts)} images", flush=True)

    distances = pairwise_distances(latents)
    anchors = nearest(distances)
    result = {
        "config": args.config,
        "overrides": args.set,
        "kind": args.kind,
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seeds": args.seeds,
        "images_per_concept": len(slots),
        "distances": distances,
        "anchors": anchors,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n", "anchors")
    atomic_write_text(out.with_suffix(".md"), markdown(result, list(concepts)), "anchors")
    print(markdown(result, list(concepts)))
    return result


def markdown(result: dict, concepts: list[str]) -> str:
    lines = [
        f"Nearest anchor per toy {result['kind']} (`scripts/bench/nearest_anchor.py --kind {result['kind']}`): "
        f"mean squared difference of the original model's final latents for two {result['kind']}s' prompts "
        f"from the same noise ({result['sampler']} {result['steps']} steps, CFG {result['guidance_scale']:g}, "
        f"{result['images_per_concept']} images per {result['kind']}). Row: the erased concept; **bold**: "
        f"its nearest anchor.",
        "",
        "| concept | " + " | ".join(concepts) + " | nearest |",
        "|---|" + "---|" * (len(concepts) + 1),
    ]
    for a in concepts:
        row = result["distances"][a]
        cells = [
            "—" if b == a else (f"**{row[b]:.4f}**" if b == result["anchors"][a] else f"{row[b]:.4f}") for b in concepts
        ]
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {result['anchors'][a]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_script(main)
