#!/usr/bin/env python
"""How often the original model's erase target still shows the erased concept.

    python scripts/bench/target_leak.py --kind object --scales 0 1 2 \\
        --out scripts/bench/results/toy/target_leak.json

Mask erasure (and any deconcept-anchored method) trains the concept prompt towards what the
original model draws for the deconcept prompt ("a striped circle" -> "a striped object").
If the original draws the concept itself for some noise, those samples teach the masks to
keep it. For every toy concept of ``--kind`` this draws every deconcept prompt of
`canvas_prompt_sets` (``--seeds`` seeds each) with the trajectory sampler of
``configs/methods/minimalist.yaml`` (Euler, 10 steps, CFG 3), once per negation scale s_n of
`NegatedConceptCFG` (0 = the paper's target), and reports the share the judge reads as the
erased concept ("leak") and the share whose other attribute (the style of an object prompt,
the object of a style prompt) is still read right ("kept"). Writes ``--out`` (JSON) and the
same table as markdown beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearn.scripting import add_trajectory_arguments, canvas_spec_of, json_output, run_script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="*", default=["configs/models/toy_canvas.yaml"], help="model config files")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    p.add_argument("--judge", default="checkpoints/toy/judge.safetensors")
    p.add_argument("--kind", choices=["object", "style"], default="object")
    p.add_argument("--concepts", nargs="*", help="default: every concept of --kind")
    p.add_argument("--scales", nargs="+", type=float, default=[0.0, 1.0, 2.0], help="negation scales s_n")
    p.add_argument("--seeds", type=int, default=2, help="seeds per deconcept prompt")
    add_trajectory_arguments(p)
    p.add_argument("--out", required=True, help="a .json file")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = json_output(args.out)

    import torch

    from unlearn.data.captions import mentions_concept
    from unlearn.data.prompt_batches import canvas_prompt_sets
    from unlearn.diffusion.guiders import NegatedConceptCFG
    from unlearn.engine import generation
    from unlearn.engine.loading import load_model
    from unlearn.eval.judge import load_judge

    model = load_model(args.config, overrides=args.set).eval()
    spec = canvas_spec_of(model, args.config)
    judge = load_judge(args.judge)
    concepts = args.concepts or list(spec.objects if args.kind == "object" else spec.styles)
    samplers = {}
    for scale in args.scales:
        samplers[scale] = model.make_sampler(args.sampler, args.steps, args.guidance_scale)
        if scale > 0:
            samplers[scale].guider = NegatedConceptCFG(args.guidance_scale, scale)
    rows = []
    for concept in concepts:
        if spec.concept_kind(concept) != args.kind:
            raise ValueError(f"--concepts: {concept!r} is not a toy {args.kind}")
        _, deconcept, _ = canvas_prompt_sets(concept, spec)
        prompts = [p for p in deconcept for _ in range(args.seeds)]
        other = spec.styles if args.kind == "object" else spec.objects
        # the attribute the deconcept prompt still names (its style, or its object)
        kept_label = torch.tensor([next(i for i, o in enumerate(other) if mentions_concept(p, o)) for p in prompts])
        row = {"concept": concept, "n": len(prompts)}
        for scale, sampler in samplers.items():
            pred_obj, pred_style = [], []
            for start in range(0, len(prompts), args.batch_size):
                chunk = prompts[start:start + args.batch_size]
                seeds = list(range(start, start + len(chunk)))
                with torch.no_grad():
                    cond = model.conditioning_for(chunk)
                    uc = model.unconditional_for([""] * len(chunk))
                    if scale > 0:
                        uc = NegatedConceptCFG.stack_uc(uc, model.conditioning_for([concept] * len(chunk)))
                    noise = generation.seeded_noise(seeds, model.latent_shape, model.device)
                    x = model.decode_first_stage(model.run_sampler(sampler, noise, cond, uc, seeds)).clamp(-1, 1)
                    lo, ls = judge(x)
                pred_obj.append(lo.argmax(-1))
                pred_style.append(ls.argmax(-1))
            pred_o, pred_s = torch.cat(pred_obj), torch.cat(pred_style)
            concept_pred, other_pred = (pred_o, pred_s) if args.kind == "object" else (pred_s, pred_o)
            own = (spec.objects if args.kind == "object" else spec.styles).index(concept)
            row[f"leak@{scale:g}"] = round(100 * float((concept_pred == own).float().mean()), 1)
            row[f"kept@{scale:g}"] = round(100 * float((other_pred == kept_label).float().mean()), 1)
        rows.append(row)
        print(row, flush=True)

    result = {"config": args.config, "kind": args.kind, "sampler": args.sampler, "steps": args.steps,
              "guidance_scale": args.guidance_scale, "seeds": args.seeds, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    cols = [k for k in rows[0] if k.startswith(("leak@", "kept@"))]
    lines = [f"Erase-target leak (`scripts/bench/target_leak.py --kind {args.kind}`): share of the original "
             f"model's deconcept images read as the erased {args.kind} (leak) and with their "
             f"{'style' if args.kind == 'object' else 'object'} read right (kept), per negation scale s_n "
             f"({args.sampler} {args.steps} steps, CFG {args.guidance_scale:g}, {args.seeds} seeds per prompt).",
             "", "| concept | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    lines += [f"| {r['concept']} | {r['n']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |" for r in rows]
    means = [sum(r[c] for r in rows) / len(rows) for c in cols]
    lines.append("| **mean** | | " + " | ".join(f"**{m:.1f}**" for m in means) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    run_script(main)
